"""Query, adapter lifecycle, stats and health through the recording worker double."""

from __future__ import annotations

import pytest
from test_api_models import _problem

pytestmark = pytest.mark.integration
A = "/api/v1/llm/lora/adapters"
Q = "/api/v1/llm/lora/query"
SEED_QUERY = {
    "model_id": "gemma-3-270m",
    "adapter_id": "themis_help_lora",
    "prompt": "How do I enable sharding in ThemisDB?",
    "max_tokens": 500,
    "temperature": 0.7,
    "user_id": "user_42",
}


def test_seed_query_answers_and_audits(api, ctx, ready_adapter, tenant, worker_server):
    ready_adapter(tenant)
    r = api("POST", Q, json=SEED_QUERY, scopes=("lora:write",))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["response"] == "echo: How do I enable sharding in ThemisDB?"
    assert out["model_id"] == "gemma-3-270m" and out["adapter_id"] == "themis_help_lora"
    assert out["tokens_used"] == 12 and out["inference_time_ms"] == 12
    assert out["version"] == "v1.0" and out["audit_id"].startswith("audit_")
    method, path, sent = worker_server.calls[-1]
    assert (method, path) == ("POST", "/internal/generate")
    assert sent["adapter"]["gguf_key"].endswith("/v1.0/adapter.gguf")
    assert sent["adapter"]["tenant"] == tenant and sent["max_tokens"] == 500
    audit = ctx.repo.get_audit(tenant, out["audit_id"])
    assert audit["sub"] == "user-1" and audit["user_id"] == "user_42"
    assert audit["prompt_tokens"] == 5 and audit["completion_tokens"] == 7
    assert audit["expires_at"] > audit["latency_ms"]
    assert "token" not in " ".join(audit.keys()).replace("_tokens", "")


def test_query_base_model_without_adapter(api, seed_model, worker_server):
    seed_model()
    r = api("POST", Q, json={"model_id": "gemma-3-270m", "adapter_id": None, "prompt": "hi"})
    assert r.status_code == 200, r.text
    assert r.json()["adapter_id"] is None
    assert worker_server.calls[-1][2]["adapter"] is None
    assert worker_server.calls[-1][2]["max_tokens"] == 256


def test_query_never_falls_back_to_base(api, ctx, seed_model, seed_dataset, tenant, worker_server):
    seed_model()
    body = {**SEED_QUERY, "adapter_id": "invalid_adapter"}
    err = _problem(api("POST", Q, json=body), 404, "Adapter not found")
    assert err["details"] == "Unknown adapter_id: invalid_adapter"
    seed_dataset(tenant)
    api(
        "POST",
        A,
        json={
            "adapter_id": "themis_help_lora",
            "base_model": "gemma-3-270m",
            "training_data": {"dataset_id": "docs_v1"},
        },
    )
    _problem(api("POST", Q, json=SEED_QUERY), 409, "Adapter not ready")
    assert "/internal/generate" not in worker_server.paths()


def test_query_model_mismatch_and_validation(api, ready_adapter, seed_model, tenant):
    ready_adapter(tenant)
    seed_model("other-model", architecture="llama")
    _problem(api("POST", Q, json={**SEED_QUERY, "model_id": "other-model"}), 400, "Model mismatch")
    _problem(api("POST", Q, json={**SEED_QUERY, "model_id": "unknown"}), 404, "Model not found")
    for patch in (
        {"max_tokens": 0},
        {"max_tokens": 5000},
        {"temperature": 2.5},
        {"prompt": ""},
        {"stop": "x"},
    ):
        _problem(api("POST", Q, json={**SEED_QUERY, **patch}), 400, "Validation failed")


def test_query_with_explicit_versions(api, ctx, ready_adapter, tenant, flip, worker_server):
    ready_adapter(tenant)
    out = api(
        "PUT", f"{A}/themis_help_lora", json={"additional_training_data": {"dataset_id": "docs_v1"}}
    ).json()
    assert api("POST", Q, json={**SEED_QUERY, "version": "v1.1"}).status_code == 409
    flip(ctx, out["job_id"])
    assert api("POST", Q, json=SEED_QUERY).json()["version"] == "v1.1"
    assert api("POST", Q, json={**SEED_QUERY, "version": "v1.0"}).json()["version"] == "v1.0"
    _problem(api("POST", Q, json={**SEED_QUERY, "version": "v1.9"}), 404, "Version not found")


def test_query_invalid_model_file_is_409(api, ctx, ready_adapter, tenant):
    ready_adapter(tenant)
    ctx.repo.set_model_file_status("gemma-3-270m", "invalid", {"error": "bad"})
    _problem(api("POST", Q, json=SEED_QUERY), 409, "Model file invalid")


def test_load_status_unload(api, ready_adapter, tenant, worker_server):
    ready_adapter(tenant)
    st = api("GET", f"{A}/themis_help_lora/status", scopes=("lora:read",)).json()
    assert st["is_loaded"] is False
    r = api("POST", f"{A}/themis_help_lora/load")
    assert r.status_code == 200
    assert r.json() | {"memory_usage_mb": None, "cache_hit": None} == {
        "adapter_id": "themis_help_lora",
        "status": "loaded",
        "load_time_ms": 45,
        "version": "v1.0",
        "memory_usage_mb": None,
        "cache_hit": None,
    }
    st = api("GET", f"{A}/themis_help_lora/status").json()
    assert st["is_loaded"] is True and st["memory_usage_mb"] == 32
    assert st["last_used"] == "2026-12-03T16:00:00Z" and st["version"] == "v1.0"
    r = api("POST", f"{A}/themis_help_lora/unload")
    assert r.json() == {"adapter_id": "themis_help_lora", "status": "unloaded", "version": "v1.0"}
    assert api("GET", f"{A}/themis_help_lora/status").json()["is_loaded"] is False
    _problem(api("POST", f"{A}/invalid_adapter/load"), 404, "Adapter not found")
    _problem(api("POST", f"{A}/themis_help_lora/load", scopes=("lora:read",)), 403)


def test_load_training_adapter_is_409(api, seed_model, seed_dataset, tenant):
    seed_model()
    seed_dataset(tenant)
    api(
        "POST",
        A,
        json={
            "adapter_id": "t1",
            "base_model": "gemma-3-270m",
            "training_data": {"dataset_id": "docs_v1"},
        },
    )
    _problem(api("POST", f"{A}/t1/load"), 409, "Adapter not ready")


def test_worker_errors_map_back(api, ready_adapter, tenant, worker_server):
    ready_adapter(tenant)
    worker_server.fail["/internal/adapters/load"] = (
        409,
        {"error": "Checksum mismatch", "details": "sha256 differs", "status": 409},
    )
    err = _problem(api("POST", f"{A}/themis_help_lora/load"), 409, "Checksum mismatch")
    assert err["details"] == "sha256 differs"
    worker_server.fail["/internal/generate"] = (500, {"error": "boom", "status": 500})
    _problem(api("POST", Q, json=SEED_QUERY), 502, "Worker error")


def test_no_worker_configured_is_503(api, make_ctx, ready_adapter, tenant):
    make_ctx(worker=False)
    ready_adapter(tenant)
    err = _problem(api("POST", Q, json=SEED_QUERY), 503, "Worker unavailable")
    assert "LORA_WORKER_URL" in err["details"]
    _problem(api("POST", f"{A}/themis_help_lora/load"), 503)
    _problem(api("GET", "/api/v1/llm/lora/stats"), 503)
    # listing still works, with is_loaded false
    assert api("GET", A).json()["adapters"][0]["is_loaded"] is False


def test_stats(api, ready_adapter, tenant):
    ready_adapter(tenant)
    api("POST", f"{A}/themis_help_lora/load")
    assert api("GET", "/api/v1/llm/lora/stats", scopes=("lora:read",)).json() == {
        "total_adapters": 1,
        "loaded_adapters": 1,
        "cache_hit_rate": 0.75,
        "total_inferences": 7,
        "avg_load_time_ms": 12.5,
        "uptime_seconds": 42,
        "memory_usage_mb": 900,
    }
    assert (
        api("GET", "/api/v1/llm/lora/stats", tenant_id="someone-else").json()["total_adapters"] == 0
    )


def test_health_truthful(api, make_ctx, worker_server):
    r = api("GET", "/api/v1/llm/lora/health")
    assert r.status_code == 200 and r.json() == {
        "status": "healthy",
        "storage": "ok",
        "manager": "ok",
        "training": "ok",
        "checks_passed": 3,
        "checks_failed": 0,
    }
    worker_server.model_loaded = False
    r = api("GET", "/api/v1/llm/lora/health")
    assert r.status_code == 503
    assert r.json()["manager"] == "error" and r.json()["checks_failed"] == 1
    make_ctx(worker=False, queue_url="http://127.0.0.1:1/nothing", bucket_name="no-such-bucket")
    body = api("GET", "/api/v1/llm/lora/health").json()
    assert body["status"] == "unhealthy" and body["checks_failed"] == 3
    assert (body["storage"], body["manager"], body["training"]) == ("error",) * 3
