"""HTTP glue shared by the function routers: authentication dependencies and body parsing.

Authentication, rate limiting and the scope check run as the route's first dependency,
before the body is read, so an unauthenticated request is a 401 whatever its body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from lora_common import auth
from lora_common.context import Context, get_context
from lora_common.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from lora_common.problem import validation_error

M = TypeVar("M", bound=BaseModel)


def context() -> Context:
    return get_context()


def requires(scope: str) -> Callable[..., auth.Principal]:
    """Dependency: authenticate the bearer token, count it against the rate limit, check
    ``scope``; returns the Principal."""

    def dependency(request: Request) -> auth.Principal:
        ctx = get_context()
        principal = ctx.authenticator.authenticate(request.headers.get("authorization"))
        state = request.scope.setdefault("state", {})
        # A RateLimited error carries its own counter headers.
        decision = ctx.limiter.check(principal.token_digest, ctx.clock())
        state["extra_headers"] = decision.headers()
        auth.require_scope(principal, scope)
        return principal

    dependency.__name__ = f"requires_{scope.replace(':', '_')}"
    return dependency


# Annotated principals: the parameter both authenticates and checks the scope.
ReadPrincipal = Annotated[auth.Principal, Depends(requires(auth.READ))]
WritePrincipal = Annotated[auth.Principal, Depends(requires(auth.WRITE))]
AdminPrincipal = Annotated[auth.Principal, Depends(requires(auth.ADMIN))]


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge("Payload too large", f"Request body exceeds {limit} bytes")
    return bytes(body)


def _is_json(mt: str) -> bool:
    return mt in ("", "application/json") or mt.endswith("+json")


async def json_body(request: Request, model: type[M], limit: int) -> M:
    """Read, decode and validate a JSON body into ``model`` (400/413/415 as domain errors)."""
    mt = media_type(request)
    if not _is_json(mt):
        raise UnsupportedMediaType(
            "Unsupported media type", f"Content-Type {mt} is not accepted; send application/json"
        )
    raw = await read_body(request, limit)
    return parse_json_model(raw, model)


def parse_json_model(raw: bytes, model: type[M]) -> M:
    try:
        data = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("Invalid JSON body", f"Request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("Invalid JSON body", "Request body is nested too deeply") from None
    if data is None:
        raise BadRequest("Invalid JSON body", "Request body is empty; a JSON object is required")
    if not isinstance(data, dict):
        raise BadRequest("Invalid JSON body", "Request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
