"""Domain error hierarchy.

Every failure the service reports is one of these types. Each carries a short ``error``
title, a human ``details`` string and, for validation failures, a list of per-field reasons.
The HTTP status is chosen from the *type* in ``lora_common.problem`` and nowhere else.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error the service reports to a caller."""

    slug = "error"

    def __init__(
        self,
        error: str,
        details: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {details}" if details else error)
        self.error = error
        self.details = details
        self.errors = errors
        self.headers = headers or {}


class BadRequest(DomainError):
    """The request is malformed or a value is out of range."""

    slug = "bad-request"


class ValidationFailed(BadRequest):
    """One or more fields failed validation; ``errors`` lists them."""

    slug = "validation-failed"


class Unauthorized(DomainError):
    """No usable credentials (missing, malformed, expired or forged token)."""

    slug = "unauthorized"


class Forbidden(DomainError):
    """Authenticated, but the token lacks the scope the operation needs."""

    slug = "forbidden"


class NotFound(DomainError):
    """The resource does not exist (or belongs to another tenant)."""

    slug = "not-found"


class MethodNotAllowed(DomainError):
    """The path exists but not with this method."""

    slug = "method-not-allowed"


class Conflict(DomainError):
    """The request conflicts with the current state (duplicate id, not ready, in use)."""

    slug = "conflict"


class PayloadTooLarge(DomainError):
    """The request body exceeds the configured limit."""

    slug = "payload-too-large"


class UnsupportedMediaType(DomainError):
    """The request body's Content-Type is not accepted by this operation."""

    slug = "unsupported-media-type"


class RateLimited(DomainError):
    """The caller's token exceeded its request budget for the current window."""

    slug = "rate-limited"

    def __init__(self, error: str, details: str | None = None, *, retry_after: int, **kw: Any):
        super().__init__(error, details, **kw)
        self.retry_after = retry_after


class ServiceUnavailable(DomainError):
    """A dependency (queue, worker, storage) cannot be reached right now."""

    slug = "service-unavailable"


class UpstreamError(DomainError):
    """A dependency answered with an unexpected failure (for example a worker 500)."""

    slug = "upstream-error"


class InternalError(DomainError):
    """Unexpected failure; details never include internals."""

    slug = "internal-error"
