"""problem+json rendering, exception handlers and the app factory.

This is the one module that maps domain errors to HTTP status codes, by type. Every error
response is ``application/problem+json`` carrying the public API's ``error``, ``details`` and
``status`` plus RFC 9457 ``type`` and ``title``. FastAPI's default ``{"detail": ...}`` and
422 shapes never leave the process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lora_common import errors as e

log = logging.getLogger("lora")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:lora:problem:"

# Most specific first is not needed: lookup walks the exception's MRO.
STATUS_BY_TYPE: dict[type[e.DomainError], int] = {
    e.BadRequest: 400,
    e.ValidationFailed: 400,
    e.Unauthorized: 401,
    e.Forbidden: 403,
    e.NotFound: 404,
    e.MethodNotAllowed: 405,
    e.Conflict: 409,
    e.PayloadTooLarge: 413,
    e.UnsupportedMediaType: 415,
    e.RateLimited: 429,
    e.InternalError: 500,
    e.UpstreamError: 502,
    e.ServiceUnavailable: 503,
}

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

UNAUTHORIZED_DETAILS = (
    "Valid Bearer Token required. Include 'Authorization: Bearer <token>' header."
)


def status_for(exc: e.DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_TYPE:
            return STATUS_BY_TYPE[cls]
    return 500


def problem_body(exc: e.DomainError, status: int | None = None) -> dict[str, Any]:
    status = status or status_for(exc)
    body: dict[str, Any] = {
        "type": TYPE_BASE + exc.slug,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "error": exc.error,
    }
    if exc.details is not None:
        body["details"] = exc.details
    if exc.errors is not None:
        body["errors"] = exc.errors
    return body


def problem_response(exc: e.DomainError) -> JSONResponse:
    status = status_for(exc)
    headers = dict(exc.headers)
    if isinstance(exc, e.Unauthorized):
        headers.setdefault("WWW-Authenticate", "Bearer")
    if isinstance(exc, e.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(
        problem_body(exc, status), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def _field_of(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_error(errors: Iterable[dict[str, Any]]) -> e.DomainError:
    """pydantic/FastAPI error dicts -> ValidationFailed (or the seed's invalid-JSON error).

    Inputs are never echoed back: they may hold prompts or secrets.
    """
    errors = list(errors)
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error") or err.get("msg", "")
            return e.BadRequest("Invalid JSON body", f"Request body is not valid JSON: {reason}")
    items = []
    for err in errors:
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        items.append({"field": _field_of(err.get("loc", ())), "reason": msg})
    details = "; ".join(f"{i['field']}: {i['reason']}" for i in items[:10])
    return e.ValidationFailed("Validation failed", details, errors=items)


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.DomainError)
    return problem_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_error(exc.errors()))


def _iter_routes(routes: Iterable[Any]) -> Iterable[Any]:
    # Newer FastAPI keeps included routers as one entry; the routers here have no prefix,
    # so their routes' own path patterns are the served ones.
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _iter_routes(inner.routes)
        else:
            yield route


def _allowed_methods(request: Request) -> str:
    """Every method any route accepts for this path (Starlette reports only the first
    partially matching route's methods, and FastAPI makes one route per method)."""
    methods: set[str] = set()
    for route in _iter_routes(getattr(request.app, "routes", [])):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = exc.status_code
    headers = dict(exc.headers or {})
    if code == 404:
        err: e.DomainError = e.NotFound("Not found", f"No route for {request.url.path}")
    elif code == 405:
        allow = _allowed_methods(request) or headers.get("Allow", "")
        headers["Allow"] = allow
        err = e.MethodNotAllowed(
            "Method not allowed", f"{request.method} is not allowed here; allowed: {allow}"
        )
    elif code == 413:
        err = e.PayloadTooLarge("Payload too large", "The request body is too large")
    elif code == 415:
        err = e.UnsupportedMediaType("Unsupported media type", str(exc.detail))
    elif code == 401:
        err = e.Unauthorized("Unauthorized", UNAUTHORIZED_DETAILS)
    elif code >= 500:
        err = e.InternalError("Internal server error", "An unexpected error occurred")
    else:
        err = e.BadRequest("Bad request", "The request could not be processed")
    err.headers.update(headers)
    return problem_response(err)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        e.InternalError("Internal server error", "An unexpected error occurred")
    )


class ResponseHeadersMiddleware:
    """Pure ASGI middleware: 413 on oversized bodies, and headers decided during the request
    (rate-limit counters, deprecation) added to whatever response goes out, errors included."""

    def __init__(self, app: Any, settings_provider: Any) -> None:
        self.app = app
        self.settings_provider = settings_provider

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        settings = self.settings_provider()
        limit = settings.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    resp = problem_response(
                        e.PayloadTooLarge(
                            "Payload too large", f"Request body exceeds {limit} bytes"
                        )
                    )
                    await resp(scope, receive, send)
                    return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                for k, v in (state.get("extra_headers") or {}).items():
                    headers.append((k.lower().encode(), str(v).encode()))
                route = scope.get("route")
                template = getattr(route, "path_format", None) or getattr(route, "path", None)
                if template and settings.is_deprecated(scope["method"], template):
                    headers.append((b"deprecated", b"true"))
                    headers.append((b"sunset", settings.deprecation_sunset.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(routers: Iterable[APIRouter], settings_provider: Any = None) -> FastAPI:
    """One FastAPI app from routers; used by every Lambda function and by the local stack."""
    if settings_provider is None:
        from lora_common.context import current_settings

        settings_provider = current_settings
    # Validate configuration when the function loads (Lambda init), not on the first request:
    # a misconfigured deployment (say, aws mode without key material) fails to start.
    settings_provider()
    app = FastAPI(
        title="LoRA service API",
        version="1.0.0",
        # Every endpoint requires a token, so the schema and docs routes are not served.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(e.DomainError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(ResponseHeadersMiddleware, settings_provider=settings_provider)
    return app
