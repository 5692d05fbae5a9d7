"""Helpers and fixtures of the infrastructure tests: the templates, sam and its build, RS256
tokens, the Lambda environment (pointed at tests/conftest.py's moto server), and a runner that
invokes a Lambda handler in a process of its own. (conftest.py re-exports the fixtures; test
modules import the helpers from here, since several directories have a conftest module.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "tests" / "events"
RUNNER = Path(__file__).resolve().parent / "lambda_runner.py"
REGION = "us-east-1"
ISSUER = "https://issuer.test.example/"
AUDIENCE = "lora-api"

# What the python3.11 Lambda runtime itself provides (/var/runtime): boto3 and its deps.
LAMBDA_RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3",
                           "six.py")


# ------------------------------------------------------------------ templates
def load_cfn(path: Path) -> dict[str, Any]:
    """A CloudFormation/SAM template with short-form tags in long form (the local stack's
    reader, so the tests and devstack see the same thing)."""
    from devstack.resources import load_template

    return load_template(path)


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_cfn(REPO / "template.yaml")


@pytest.fixture(scope="session")
def worker_template() -> dict[str, Any]:
    return load_cfn(REPO / "infra" / "worker.yaml")


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


# ------------------------------------------------------------------ tools
def find_sam() -> str | None:
    """sam from the project's own environment (.venv-sam, see Makefile) or from PATH."""
    local = REPO / ".venv-sam" / "bin" / "sam"
    if local.exists():
        return str(local)
    return shutil.which("sam")


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(SAM_CLI_TELEMETRY="0", AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION,
               SAM_CLI_DISABLE_UPDATE_CHECK="1")
    # sam's python3.11 builder runs `python3.11 -m pip`; the interpreter of this test run is
    # one (pyproject requires 3.11), so put it first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="session")
def sam() -> str:
    path = find_sam()
    if path is None:
        pytest.fail("sam not found: python3 -m venv .venv-sam && .venv-sam/bin/pip install "
                    "aws-sam-cli (or `make .venv-sam/bin/sam`)")
    return path


@pytest.fixture(scope="session")
def sam_build(sam: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sam build` of template.yaml into a temporary directory (once per session)."""
    root = tmp_path_factory.mktemp("sam")
    build_dir = root / "build"
    proc = subprocess.run(
        [sam, "build", "--template-file", str(REPO / "template.yaml"),
         "--build-dir", str(build_dir), "--cache-dir", str(root / "cache")],
        cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"sam build failed:\n{proc.stdout}\n{proc.stderr}"
    return build_dir


@pytest.fixture(scope="session")
def lambda_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only what the Lambda runtime ships (boto3 & co.), linked from this
    environment: the stand-in for /var/runtime."""
    import boto3

    site = Path(boto3.__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("lambda-runtime")
    for name in LAMBDA_RUNTIME_PACKAGES:
        if (site / name).exists():
            (out / name).symlink_to(site / name)
    return out


# ------------------------------------------------------------------ tokens
@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def mint_rs256(private_pem: str, *, scopes: str = "lora:read lora:write lora:admin",
               tenant: str = "acme", sub: str = "user-1") -> str:
    import jwt

    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tenant": tenant, "scope": scopes,
              "iat": now, "exp": now + 600}
    return jwt.encode(claims, private_pem, algorithm="RS256")


# ------------------------------------------------------------------ storage + environment
def create_storage(session_or_endpoint: Any, prefix: str) -> dict[str, str]:
    """Table, bucket and queues as template.yaml declares them, created by the same code the
    local stack uses (devstack.resources)."""
    from devstack.resources import create_resources

    names = create_resources(REPO / "template.yaml", session_or_endpoint, name_prefix=prefix)
    return {"table": names["table_name"], "bucket": names["bucket_name"],
            "queue_url": names["queue_url"]}


@pytest.fixture(scope="session")
def lambda_env(aws_endpoint: str, aws_resources: dict[str, str],
               rsa_keys: tuple[str, str]) -> dict:
    """The environment template.yaml gives the API functions (aws mode), pointed at the moto
    server and resources of tests/conftest.py (aws_endpoint, aws_resources)."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "LORA_MODE": "aws",
        "LORA_TABLE_NAME": aws_resources["table_name"],
        "LORA_BUCKET_NAME": aws_resources["bucket_name"],
        "LORA_QUEUE_URL": aws_resources["queue_url"],
        "LORA_JWT_ISSUER": ISSUER,
        "LORA_JWT_AUDIENCE": AUDIENCE,
        # Deployed stacks set LORA_JWT_JWKS_URL; a PEM key verifies the same RS256 tokens
        # without an HTTPS JWKS endpoint.
        "LORA_JWT_PUBLIC_KEY": rsa_keys[1],
        "LORA_RATE_LIMIT_PER_HOUR": "1000",
        "LORA_AUDIT_RETENTION_DAYS": "90",
    }


def run_handler(sys_path: list[Path | str], module: str, events: list[dict[str, Any]],
                env: dict[str, str]) -> dict[str, Any]:
    """Import ``module`` with only ``sys_path`` + the standard library, call its handler with
    each event, and return the runner's report."""
    request = {"sys_path": [str(p) for p in sys_path], "module": module, "events": events}
    proc = subprocess.run([sys.executable, "-I", "-S", str(RUNNER)], input=json.dumps(request),
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{module} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
