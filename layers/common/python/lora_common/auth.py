"""Bearer-token authentication and scope checks.

Algorithms are pinned: RS256/ES256 (JWKS URL or PEM public key) in aws mode, HS256 with a
shared secret only in local mode. ``exp``, ``iat``, ``sub``, ``iss`` and ``aud`` are required.
Any failure of a token is a 401 with the public API's fixed body; a token never causes a 5xx.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from lora_common import keys
from lora_common.errors import Forbidden, Unauthorized
from lora_common.settings import Settings

READ, WRITE, ADMIN = "lora:read", "lora:write", "lora:admin"
ALL_SCOPES = (READ, WRITE, ADMIN)
# A scope grants itself and everything below it.
_IMPLIES = {ADMIN: {ADMIN, WRITE, READ}, WRITE: {WRITE, READ}, READ: {READ}}
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@|:+=-]{0,127}$")
ASYMMETRIC = ["RS256", "ES256"]
UNAUTHORIZED_DETAILS = (
    "Valid Bearer Token required. Include 'Authorization: Bearer <token>' header."
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: user (``sub``), tenant, effective scopes and a digest of the token."""

    sub: str
    tenant: str
    scopes: frozenset[str]
    token_digest: str

    def has(self, scope: str) -> bool:
        return scope in self.scopes


def _unauthorized() -> Unauthorized:
    return Unauthorized("Unauthorized", UNAUTHORIZED_DETAILS)


def expand_scopes(raw: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for s in raw:
        out |= _IMPLIES.get(s, set())
    return frozenset(out)


def _claimed_scopes(claims: dict[str, Any]) -> list[str]:
    found: list[str] = []
    scope = claims.get("scope")
    if isinstance(scope, str):
        found += scope.split()
    for name in ("scp", "permissions"):
        value = claims.get(name)
        if isinstance(value, str):
            found += value.split()
        elif isinstance(value, list):
            found += [v for v in value if isinstance(v, str)]
    return found


class Authenticator:
    """Verifies bearer tokens against the configured key material."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jwks_client: Any = None
        if settings.jwt_jwks_url:
            self._jwks_client = jwt.PyJWKClient(
                settings.jwt_jwks_url, cache_keys=True, lifespan=3600, timeout=5
            )

    def _key_and_algorithms(self, token: str) -> tuple[Any, list[str]]:
        s = self.settings
        if self._jwks_client is not None:
            return self._jwks_client.get_signing_key_from_jwt(token).key, ASYMMETRIC
        if s.jwt_public_key:
            return s.jwt_public_key, ASYMMETRIC
        if s.mode == "local" and s.jwt_secret is not None:
            return s.jwt_secret.get_secret_value(), ["HS256"]
        raise _unauthorized()

    def authenticate(self, authorization: str | None) -> Principal:
        """``Authorization`` header value -> Principal, or Unauthorized."""
        if not authorization:
            raise _unauthorized()
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise _unauthorized()
        try:
            key, algorithms = self._key_and_algorithms(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except Unauthorized:
            raise
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise _unauthorized() from None
        sub = claims.get("sub")
        tenant = claims.get("tenant", sub)
        if not isinstance(sub, str) or not sub or not isinstance(tenant, str):
            raise _unauthorized()
        if not _TENANT_RE.match(tenant):
            raise _unauthorized()
        return Principal(
            sub=sub,
            tenant=tenant,
            scopes=expand_scopes(_claimed_scopes(claims)),
            token_digest=keys.token_hash(token),
        )


def require_scope(principal: Principal, scope: str) -> None:
    if not principal.has(scope):
        raise Forbidden("Forbidden", f"This operation requires the '{scope}' scope")


def mint_local_token(
    settings: Settings,
    sub: str = "local-user",
    tenant: str | None = "local",
    scopes: Iterable[str] = ALL_SCOPES,
    ttl_seconds: int = 3600,
    **extra_claims: Any,
) -> str:
    """HS256 token for the local stack and tests. Refused outside local mode."""
    if settings.mode != "local" or settings.jwt_secret is None:
        raise RuntimeError("local tokens can only be minted in local mode with a secret")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_seconds,
        "scope": " ".join(scopes),
    }
    if tenant is not None:
        claims["tenant"] = tenant
    claims.update(extra_claims)
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
