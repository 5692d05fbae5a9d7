"""Settings refusals and token verification (RS256/ES256/HS256, pinned algorithms)."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from lora_common.auth import Authenticator, expand_scopes, mint_local_token
from lora_common.errors import Unauthorized
from lora_common.settings import LOCAL_DEV_SECRET, Settings

pytestmark = pytest.mark.unit


def _pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _claims(**kw):
    now = int(time.time())
    c = {
        "sub": "u1",
        "iss": "iss",
        "aud": "aud",
        "iat": now,
        "exp": now + 60,
        "scope": "lora:read",
        "tenant": "t1",
    }
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def test_aws_mode_refuses_hs256_secret():
    with pytest.raises(ValidationError, match="only allowed when LORA_MODE=local"):
        Settings(mode="aws", jwt_secret="x" * 40, jwt_public_key="pem")


def test_aws_mode_requires_key_material():
    with pytest.raises(ValidationError, match="JWKS_URL or LORA_JWT_PUBLIC_KEY"):
        Settings(mode="aws")


def test_local_mode_gets_dev_secret():
    assert Settings(mode="local").jwt_secret.get_secret_value() == LOCAL_DEV_SECRET


def test_deprecated_routes_from_comma_separated_env(monkeypatch):
    monkeypatch.setenv("LORA_DEPRECATED_ROUTES", "get /api/v1/llm/models, POST /x/{id}")
    assert Settings().deprecated_routes == ["GET /api/v1/llm/models", "POST /x/{id}"]


def test_mint_refused_outside_local_mode():
    s = Settings(mode="aws", jwt_public_key="pem")
    with pytest.raises(RuntimeError):
        mint_local_token(s)


@pytest.mark.parametrize(
    "keygen, alg",
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
)
def test_aws_mode_accepts_asymmetric_tokens(keygen, alg):
    key = keygen()
    s = Settings(mode="aws", jwt_public_key=_pem(key), jwt_issuer="iss", jwt_audience="aud")
    token = jwt.encode(_claims(), key, algorithm=alg)
    p = Authenticator(s).authenticate(f"Bearer {token}")
    assert (p.sub, p.tenant, p.has("lora:read"), p.has("lora:write")) == ("u1", "t1", True, False)


def test_aws_mode_refuses_hs256_token_signed_with_public_key():
    # The classic algorithm-confusion attack: HS256 keyed with the public PEM.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(key)
    s = Settings(mode="aws", jwt_public_key=pem, jwt_issuer="iss", jwt_audience="aud")
    forged = jwt.api_jws.PyJWS().encode(
        jwt.utils.force_bytes('{"sub":"u1","iss":"iss","aud":"aud","iat":1,"exp":9999999999}'),
        b"x" * 32,
        algorithm="HS256",
    )
    with pytest.raises(Unauthorized):
        Authenticator(s).authenticate(f"Bearer {forged}")


def test_alg_none_refused():
    s = Settings(mode="local", jwt_secret="s" * 40, jwt_issuer="iss", jwt_audience="aud")
    token = jwt.encode(_claims(), None, algorithm="none")
    with pytest.raises(Unauthorized):
        Authenticator(s).authenticate(f"Bearer {token}")


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "iss", "aud"])
def test_required_claims(missing):
    s = Settings(mode="local", jwt_secret="s" * 40, jwt_issuer="iss", jwt_audience="aud")
    token = jwt.encode(_claims(**{missing: None}), "s" * 40, algorithm="HS256")
    with pytest.raises(Unauthorized):
        Authenticator(s).authenticate(f"Bearer {token}")


def test_leeway_tolerates_small_skew():
    s = Settings(
        mode="local",
        jwt_secret="s" * 40,
        jwt_issuer="iss",
        jwt_audience="aud",
        jwt_leeway_seconds=30,
    )
    token = jwt.encode(_claims(exp=int(time.time()) - 5), "s" * 40, algorithm="HS256")
    assert Authenticator(s).authenticate(f"Bearer {token}").sub == "u1"


def test_tenant_falls_back_to_sub_and_scopes_from_list_claims():
    s = Settings(mode="local", jwt_secret="s" * 40, jwt_issuer="iss", jwt_audience="aud")
    token = jwt.encode(
        _claims(tenant=None, scope=None, scp=["lora:write"]), "s" * 40, algorithm="HS256"
    )
    p = Authenticator(s).authenticate(f"Bearer {token}")
    assert p.tenant == "u1" and p.has("lora:read") and not p.has("lora:admin")


def test_tenant_with_key_separator_refused():
    s = Settings(mode="local", jwt_secret="s" * 40, jwt_issuer="iss", jwt_audience="aud")
    token = jwt.encode(_claims(tenant="a#b"), "s" * 40, algorithm="HS256")
    with pytest.raises(Unauthorized):
        Authenticator(s).authenticate(f"Bearer {token}")


def test_scope_hierarchy():
    assert expand_scopes(["lora:admin"]) == {"lora:admin", "lora:write", "lora:read"}
    assert expand_scopes(["lora:write"]) == {"lora:write", "lora:read"}
    assert expand_scopes(["other"]) == frozenset()
