"""Service statistics and a truthful health check."""

from __future__ import annotations

from typing import Any

from lora_common.context import Context
from lora_common.errors import DomainError


def stats(ctx: Context, tenant: str) -> dict[str, Any]:
    """Caller tenant's adapter count (DynamoDB) plus the worker's counters (503 without it)."""
    total = ctx.repo.count_adapters(tenant)
    w = ctx.worker.stats()
    hits, misses = int(w.get("cache_hits") or 0), int(w.get("cache_misses") or 0)
    return {
        "total_adapters": total,
        "loaded_adapters": int(w.get("loaded_adapters") or 0),
        "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
        "total_inferences": int(w.get("total_inferences") or 0),
        "avg_load_time_ms": w.get("avg_load_time_ms") or 0,
        "uptime_seconds": int(w.get("uptime_seconds") or 0),
        "memory_usage_mb": w.get("memory_usage_mb"),
    }


def _check(fn: Any) -> tuple[bool, str]:
    try:
        fn()
    except DomainError as exc:
        return False, exc.details or exc.error
    except Exception:  # a health check reports, it does not fail
        return False, "check failed"
    return True, "ok"


def health(ctx: Context) -> tuple[bool, dict[str, Any]]:
    """storage: table and bucket reachable; manager: worker reachable with its model
    loaded; training: queue reachable. Returns (healthy, body)."""

    def storage() -> None:
        ctx.repo.ping()
        ctx.blobs.ping()

    def manager() -> None:
        h = ctx.worker.health()
        if not h.get("model_loaded"):
            raise DomainError("Worker not ready", "the worker has no model loaded")

    results = {
        "storage": _check(storage),
        "manager": _check(manager),
        "training": _check(ctx.queue.ping),
    }
    passed = sum(1 for ok, _ in results.values() if ok)
    failed = len(results) - passed
    body: dict[str, Any] = {
        "status": "healthy" if failed == 0 else "unhealthy",
        **{name: ("ok" if ok else "error") for name, (ok, _) in results.items()},
        "checks_passed": passed,
        "checks_failed": failed,
    }
    if failed:
        body["errors"] = {name: msg for name, (ok, msg) in results.items() if not ok}
    return failed == 0, body
