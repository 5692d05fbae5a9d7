"""The worker's internal HTTP API (docs/ARCHITECTURE.md, "Worker HTTP API").

Handlers validate the body, call the adapter store and the engine, and shape the response;
every error leaves as problem+json (`error`, `details`, `status`, `type`, `title`). Routes are
plain `def`s: FastAPI runs them in its thread pool, so a long generate never blocks the event
loop, and health/stats stay answerable while the engine is busy.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpu_worker.serving.adapter_store import AdapterStore
from gpu_worker.serving.contracts import AdapterKey, ServingEngine
from gpu_worker.serving.errors import (
    AdapterNotLoadedError,
    ModelMismatchError,
    WorkerError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# A generate loads its adapter and then runs; another request may evict it in between when
# the cache is smaller than the working set, so the pair is retried a few times.
_LOAD_GENERATE_ATTEMPTS = 3

Name = Annotated[str, Field(min_length=1, max_length=256)]


class AdapterIdentityBody(BaseModel):
    """The part of an AdapterRef that identifies a loaded adapter (unload, status)."""

    model_config = ConfigDict(extra="ignore")

    tenant: Name
    adapter_id: Name
    version: Name

    def key(self) -> AdapterKey:
        return AdapterKey(self.tenant, self.adapter_id, self.version)


class AdapterRefBody(AdapterIdentityBody):
    """AdapterRef: where the adapter's GGUF lives in the bucket and its checksum."""

    gguf_key: Annotated[str, Field(min_length=1, max_length=1024)]
    gguf_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    scale: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_id: Name
    adapter: AdapterRefBody | None = None
    prompt: Annotated[str, Field(min_length=1, max_length=200_000)]
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 128
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    stop: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=16)
    ] = []
    seed: Annotated[int, Field(ge=0, le=2**32 - 2)] | None = None


def problem_type(code: str) -> str:
    return f"urn:lora-service:problem:{code}"


def problem_response(status: int, code: str, title: str, details: str) -> JSONResponse:
    body = {
        "error": code,
        "details": details,
        "status": status,
        "type": problem_type(code),
        "title": title,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _validation_details(exc: RequestValidationError) -> str:
    # Only the location and message of each problem: pydantic's own shape (input echo,
    # ctx, docs url) is an implementation detail and is not passed on.
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request body"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WorkerError)
    async def _worker_error(_: Request, exc: WorkerError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("worker error %s: %s", exc.code, exc.details)
        return problem_response(exc.status, exc.code, exc.title, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(400, "invalid_request", "Invalid request", _validation_details(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        title = code.replace("_", " ").capitalize()
        return problem_response(exc.status_code, code, title, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in worker request")
        return problem_response(500, "internal_error", "Internal error", "internal error")


def create_worker_app(engine: ServingEngine, adapter_store: AdapterStore, model_id: str) -> FastAPI:
    """Build the worker's FastAPI app around one engine and one adapter store."""
    app = FastAPI(title="LoRA GPU worker", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.adapter_store = adapter_store
    app.state.model_id = model_id
    _install_error_handlers(app)

    def load(ref: AdapterRefBody) -> Any:
        path = adapter_store.resolve(ref.gguf_key, ref.gguf_sha256.lower())
        return engine.load_adapter(ref.key(), str(path))

    @app.get("/internal/health")
    def health() -> dict[str, Any]:
        return {
            "model_id": model_id,
            "model_loaded": engine.model_loaded,
            "architecture": engine.architecture,
            "n_ctx": engine.n_ctx,
        }

    @app.get("/internal/stats")
    def stats() -> dict[str, Any]:
        return asdict(engine.stats())

    @app.post("/internal/adapters/load")
    def load_adapter(body: AdapterRefBody) -> dict[str, Any]:
        return asdict(load(body))

    @app.post("/internal/adapters/unload")
    def unload_adapter(body: AdapterIdentityBody) -> dict[str, Any]:
        return {"unloaded": engine.unload_adapter(body.key())}

    @app.post("/internal/adapters/status")
    def adapter_status(body: AdapterIdentityBody) -> dict[str, Any]:
        status = engine.adapter_status(body.key())
        return {
            "is_loaded": status.is_loaded,
            "memory_usage_mb": status.memory_usage_mb,
            "last_used": status.last_used.isoformat() if status.last_used else None,
        }

    @app.post("/internal/generate")
    def generate(body: GenerateBody) -> dict[str, Any]:
        if body.model_id != model_id:
            raise ModelMismatchError(
                f"this worker serves model {model_id!r}, not {body.model_id!r}"
            )
        params = {
            "prompt": body.prompt,
            "max_tokens": body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": list(body.stop),
            "seed": body.seed,
        }
        if body.adapter is None:
            result = engine.generate(adapter_key=None, **params)
        else:
            first_hit: bool | None = None
            for attempt in range(_LOAD_GENERATE_ATTEMPTS):
                loaded = load(body.adapter)
                if first_hit is None:
                    first_hit = loaded.cache_hit
                try:
                    result = engine.generate(
                        adapter_key=body.adapter.key(), adapter_scale=body.adapter.scale, **params
                    )
                    break
                except AdapterNotLoadedError:
                    if attempt == _LOAD_GENERATE_ATTEMPTS - 1:
                        raise
            result = replace(result, adapter_cache_hit=first_hit)
        return {
            "text": result.text,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "inference_time_ms": result.inference_time_ms,
            "adapter_cache_hit": result.adapter_cache_hit,
        }

    return app
