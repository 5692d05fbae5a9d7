"""Process settings: one pydantic-settings class read from ``LORA_*`` environment variables.

Logic receives a ``Settings`` instance; nothing else reads ``os.environ``. Insecure defaults
(the HS256 development secret) are refused unless ``LORA_MODE=local``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOCAL_DEV_SECRET = "local-development-secret-not-for-production-use"
DEFAULT_SUNSET = "Sat, 31 Dec 2027 23:59:59 GMT"


class Settings(BaseSettings):
    """Configuration of an API function (and of the local stack serving the same app)."""

    model_config = SettingsConfigDict(env_prefix="LORA_", extra="ignore", frozen=True)

    mode: Literal["local", "aws"] = Field(
        "local",
        description="'local' (dev stack, tests) or 'aws' (deployed); gates insecure options.",
    )
    table_name: str = Field("lora-table", description="DynamoDB table holding every entity.")
    bucket_name: str = Field("lora-bucket", description="S3 bucket for datasets and adapters.")
    queue_url: str = Field("", description="SQS queue URL that training jobs are sent to.")
    jwt_issuer: str = Field("lora-local", description="Required `iss` claim of bearer tokens.")
    jwt_audience: str = Field("lora-api", description="Required `aud` claim of bearer tokens.")
    jwt_jwks_url: str | None = Field(
        None, description="JWKS URL of the identity provider (RS256/ES256 keys), aws mode."
    )
    jwt_public_key: str | None = Field(
        None, description="PEM public key (RS256/ES256) used when no JWKS URL is set."
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 shared secret; accepted only in local mode (dev default there)."
    )
    jwt_leeway_seconds: int = Field(
        30, ge=0, le=300, description="Clock skew tolerated on exp/iat/nbf, in seconds."
    )
    rate_limit_per_hour: int = Field(
        1000, ge=1, description="Requests allowed per token per fixed one-hour window."
    )
    worker_url: str | None = Field(
        None, description="Base URL of the inference worker's internal API; unset -> 503."
    )
    worker_timeout_seconds: float = Field(
        5.0, gt=0, description="Timeout for worker control calls (health, stats, load, status)."
    )
    worker_generate_timeout_seconds: float = Field(
        120.0, gt=0, description="Timeout for a worker generate call."
    )
    audit_retention_days: int = Field(
        90, ge=1, description="Days an audit record lives before DynamoDB TTL removes it."
    )
    deprecated_routes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated 'METHOD /route/{template}' entries answered with "
        "Deprecated/Sunset headers.",
    )
    deprecation_sunset: str = Field(
        DEFAULT_SUNSET, description="HTTP date sent in the Sunset header of deprecated routes."
    )
    max_body_bytes: int = Field(
        5 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 above)."
    )

    @field_validator("deprecated_routes", mode="before")
    @classmethod
    def _split_routes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("deprecated_routes")
    @classmethod
    def _normalize_routes(cls, value: list[str]) -> list[str]:
        out = []
        for entry in value:
            method, _, path = entry.strip().partition(" ")
            if not path.strip().startswith("/"):
                raise ValueError(f"deprecated route {entry!r} must look like 'GET /path'")
            out.append(f"{method.upper()} {path.strip()}")
        return out

    @model_validator(mode="after")
    def _refuse_insecure(self) -> Settings:
        if self.mode == "aws":
            if self.jwt_secret is not None:
                raise ValueError("LORA_JWT_SECRET (HS256) is only allowed when LORA_MODE=local")
            if not (self.jwt_jwks_url or self.jwt_public_key):
                raise ValueError("aws mode needs LORA_JWT_JWKS_URL or LORA_JWT_PUBLIC_KEY")
            if self.jwt_jwks_url and not self.jwt_jwks_url.startswith("https://"):
                raise ValueError("LORA_JWT_JWKS_URL must be https in aws mode")
        elif self.jwt_secret is None and not (self.jwt_jwks_url or self.jwt_public_key):
            object.__setattr__(self, "jwt_secret", SecretStr(LOCAL_DEV_SECRET))
        return self

    def is_deprecated(self, method: str, route_template: str) -> bool:
        return f"{method.upper()} {route_template}" in self.deprecated_routes


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
