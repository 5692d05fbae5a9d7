"""Inference through the worker, adapter load/unload/status, and the audit trail."""

from __future__ import annotations

import time
from typing import Any

from lora_common.context import Context
from lora_common.errors import BadRequest, Conflict, NotFound
from lora_common.services.adapters import load_adapter, resolve_servable
from lora_common.util import iso, new_id
from lora_common.validation import QueryRequest
from lora_common.worker_client import adapter_ref


def _usable_model(ctx: Context, model_id: str) -> dict[str, Any]:
    model = ctx.repo.get_model(model_id)
    if model is None:
        raise NotFound("Model not found", f"Unknown model_id: {model_id}")
    if model.get("file_status") == "invalid":
        raise Conflict("Model file invalid", f"Model {model_id} failed file verification")
    return model


def query(ctx: Context, tenant: str, sub: str, req: QueryRequest) -> dict[str, Any]:
    """Generate with the base model or an adapter. Never falls back to the base model when
    the adapter is unknown (404) or not ready (409). Every answered query is audited."""
    _usable_model(ctx, req.model_id)
    ref = None
    version_name = None
    if req.adapter_id is not None:
        adapter, version = resolve_servable(ctx, tenant, req.adapter_id, req.version)
        if adapter["base_model"] != req.model_id:
            raise BadRequest(
                "Model mismatch",
                f"Adapter {req.adapter_id} is built on {adapter['base_model']}, not {req.model_id}",
            )
        ref = adapter_ref(tenant, req.adapter_id, version)
        version_name = version["version"]
    elif req.version is not None:
        raise BadRequest("Invalid request", "version needs an adapter_id")
    started = time.monotonic()
    result = ctx.worker.generate(
        {
            "model_id": req.model_id,
            "adapter": ref,
            "prompt": req.prompt,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stop": req.stop,
            "seed": req.seed,
        }
    )
    latency_ms = int(result.get("inference_time_ms") or (time.monotonic() - started) * 1000)
    prompt_tokens = int(result.get("prompt_tokens") or 0)
    completion_tokens = int(result.get("completion_tokens") or 0)
    now = ctx.clock()
    audit_id = new_id("audit")
    ctx.repo.put_audit(
        {
            "audit_id": audit_id,
            "tenant": tenant,
            "sub": sub,
            "user_id": req.user_id,
            "model_id": req.model_id,
            "adapter_id": req.adapter_id,
            "version": version_name,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_ms": latency_ms,
            "adapter_cache_hit": result.get("adapter_cache_hit"),
            "created_at": iso(now),
            "expires_at": int(now) + ctx.settings.audit_retention_days * 86400,
        }
    )
    return {
        "response": result.get("text", ""),
        "model_id": req.model_id,
        "adapter_id": req.adapter_id,
        "version": version_name,
        "tokens_used": prompt_tokens + completion_tokens,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "inference_time_ms": latency_ms,
        "audit_id": audit_id,
    }


def load(ctx: Context, tenant: str, adapter_id: str, version: str | None) -> dict[str, Any]:
    _, item = resolve_servable(ctx, tenant, adapter_id, version)
    result = ctx.worker.load(adapter_ref(tenant, adapter_id, item))
    return {
        "adapter_id": adapter_id,
        "status": "loaded",
        "load_time_ms": int(result.get("load_time_ms") or 0),
        "version": item["version"],
        "memory_usage_mb": result.get("memory_usage_mb"),
        "cache_hit": result.get("cache_hit"),
    }


def unload(ctx: Context, tenant: str, adapter_id: str, version: str | None) -> dict[str, Any]:
    adapter = load_adapter(ctx, tenant, adapter_id)
    name = version or adapter.get("serving_version")
    item = ctx.repo.get_version(tenant, adapter_id, name) if name else None
    if version and item is None:
        raise NotFound("Version not found", f"Adapter {adapter_id} has no version {version}")
    if item is not None and item.get("gguf_key"):
        ctx.worker.unload(adapter_ref(tenant, adapter_id, item))
    # Nothing servable means nothing can be loaded: unloading is already true.
    return {"adapter_id": adapter_id, "status": "unloaded", "version": name}


def status(ctx: Context, tenant: str, adapter_id: str, version: str | None) -> dict[str, Any]:
    adapter = load_adapter(ctx, tenant, adapter_id)
    name = version or adapter.get("serving_version")
    item = ctx.repo.get_version(tenant, adapter_id, name) if name else None
    if version and item is None:
        raise NotFound("Version not found", f"Adapter {adapter_id} has no version {version}")
    if item is None or item["status"] not in ("ready", "stored"):
        return {
            "adapter_id": adapter_id,
            "is_loaded": False,
            "memory_usage_mb": 0,
            "last_used": None,
            "version": name,
            "adapter_status": adapter.get("status"),
        }
    result = ctx.worker.status(adapter_ref(tenant, adapter_id, item))
    return {
        "adapter_id": adapter_id,
        "is_loaded": bool(result.get("is_loaded")),
        "memory_usage_mb": result.get("memory_usage_mb") or 0,
        "last_used": result.get("last_used"),
        "version": name,
        "adapter_status": adapter.get("status"),
    }
