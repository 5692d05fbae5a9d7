"""Worker HTTP API shapes and error mapping, with a stand-in engine and adapter store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from gpu_worker.serving.contracts import (
    AdapterKey,
    AdapterStatus,
    EngineStats,
    GenerateResult,
    LoadResult,
)
from gpu_worker.serving.errors import AdapterChecksumError, AdapterNotLoadedError
from gpu_worker.serving.server import create_worker_app

pytestmark = pytest.mark.unit

SHA = "ab" * 32
REF = {
    "tenant": "t1",
    "adapter_id": "a1",
    "version": "v1.0",
    "gguf_key": "adapters/t1/a1/v1.0/adapter.gguf",
    "gguf_sha256": SHA,
    "scale": 1.0,
}
PROBLEM_FIELDS = {"error", "details", "status", "type", "title"}


class FakeStore:
    def __init__(self) -> None:
        self.fail: Exception | None = None

    def resolve(self, gguf_key: str, sha256: str):
        if self.fail:
            raise self.fail
        return f"/cache/{sha256}.gguf"


class FakeEngine:
    model_loaded = True
    architecture = "gemma3"
    n_ctx = 512

    def __init__(self) -> None:
        self.loaded: dict[AdapterKey, str] = {}
        self.evict_before_generate = 0
        self.calls: list[dict] = []
        self.boom = False

    def load_adapter(self, key, path):
        hit = self.loaded.get(key) == path
        self.loaded[key] = path
        return LoadResult(1.5, 2.0, hit)

    def unload_adapter(self, key):
        return self.loaded.pop(key, None) is not None

    def adapter_status(self, key):
        if key in self.loaded:
            return AdapterStatus(True, 2.0, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        return AdapterStatus(False, 0.0, None)

    def generate(self, prompt, adapter_key=None, **params):
        if self.boom:
            raise RuntimeError("secret internal detail /opt/model.gguf")
        if adapter_key is not None and self.evict_before_generate > 0:
            self.evict_before_generate -= 1
            self.loaded.pop(adapter_key, None)
        if adapter_key is not None and adapter_key not in self.loaded:
            raise AdapterNotLoadedError("not loaded")
        self.calls.append({"prompt": prompt, "adapter_key": adapter_key, **params})
        return GenerateResult("hello", 3, 1, 12.5, None if adapter_key is None else True)

    def stats(self):
        return EngineStats(1, 2, 3, 4, 5.0, 6.0, 7.0)


@pytest.fixture
def env():
    engine, store = FakeEngine(), FakeStore()
    app = create_worker_app(engine, store, "gemma-3-270m")
    return engine, store, TestClient(app, raise_server_exceptions=False)


def gen_body(**over):
    body = {
        "model_id": "gemma-3-270m",
        "adapter": None,
        "prompt": "hi",
        "max_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": [],
        "seed": 7,
    }
    return body | over


def assert_problem(resp, status, error):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert set(body) == PROBLEM_FIELDS
    assert body["status"] == status
    assert body["error"] == error
    return body


def test_health_and_stats_shapes(env):
    _, _, client = env
    assert client.get("/internal/health").json() == {
        "model_id": "gemma-3-270m",
        "model_loaded": True,
        "architecture": "gemma3",
        "n_ctx": 512,
    }
    assert client.get("/internal/stats").json() == {
        "loaded_adapters": 1,
        "cache_hits": 2,
        "cache_misses": 3,
        "total_inferences": 4,
        "avg_load_time_ms": 5.0,
        "uptime_seconds": 6.0,
        "memory_usage_mb": 7.0,
    }


def test_load_status_unload_shapes(env):
    _, _, client = env
    first = client.post("/internal/adapters/load", json=REF).json()
    assert first == {"load_time_ms": 1.5, "memory_usage_mb": 2.0, "cache_hit": False}
    assert client.post("/internal/adapters/load", json=REF).json()["cache_hit"] is True
    status = client.post("/internal/adapters/status", json=REF).json()
    assert status == {
        "is_loaded": True,
        "memory_usage_mb": 2.0,
        "last_used": "2026-01-02T03:04:05+00:00",
    }
    assert client.post("/internal/adapters/unload", json=REF).json() == {"unloaded": True}
    assert client.post("/internal/adapters/unload", json=REF).json() == {"unloaded": False}
    assert client.post("/internal/adapters/status", json=REF).json() == {
        "is_loaded": False,
        "memory_usage_mb": 0.0,
        "last_used": None,
    }


def test_generate_without_adapter(env):
    engine, _, client = env
    resp = client.post("/internal/generate", json=gen_body())
    assert resp.json() == {
        "text": "hello",
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "inference_time_ms": 12.5,
        "adapter_cache_hit": None,
    }
    assert engine.calls[0]["seed"] == 7 and engine.calls[0]["temperature"] == 0.0


def test_generate_with_unloaded_adapter_loads_it_and_reports_a_miss(env):
    engine, _, client = env
    resp = client.post("/internal/generate", json=gen_body(adapter=REF))
    assert resp.json()["adapter_cache_hit"] is False
    assert engine.calls[-1]["adapter_key"] == AdapterKey("t1", "a1", "v1.0")
    assert (
        client.post("/internal/generate", json=gen_body(adapter=REF)).json()["adapter_cache_hit"]
        is True
    )


def test_generate_retries_when_adapter_is_evicted_between_load_and_use(env):
    engine, _, client = env
    engine.evict_before_generate = 1
    assert client.post("/internal/generate", json=gen_body(adapter=REF)).status_code == 200
    engine.evict_before_generate = 10
    assert_problem(
        client.post("/internal/generate", json=gen_body(adapter=REF)), 503, "adapter_not_loaded"
    )


def test_model_mismatch_is_409(env):
    _, _, client = env
    body = assert_problem(
        client.post("/internal/generate", json=gen_body(model_id="other-model")),
        409,
        "model_mismatch",
    )
    assert "other-model" in body["details"]


def test_checksum_mismatch_from_store_is_422(env):
    _, store, client = env
    store.fail = AdapterChecksumError("sha differs")
    assert_problem(
        client.post("/internal/adapters/load", json=REF), 422, "adapter_checksum_mismatch"
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/internal/generate", {}),
        ("/internal/generate", gen_body(max_tokens=0)),
        ("/internal/generate", gen_body(temperature=-1)),
        ("/internal/generate", gen_body(top_p=0)),
        ("/internal/generate", gen_body(prompt=None)),
        ("/internal/generate", gen_body(prompt="")),
        ("/internal/generate", gen_body(stop="not-a-list")),
        ("/internal/generate", gen_body(seed=-5)),
        ("/internal/generate", gen_body(adapter={"tenant": "t1"})),
        ("/internal/adapters/load", REF | {"gguf_sha256": "xyz"}),
        ("/internal/adapters/load", {k: v for k, v in REF.items() if k != "gguf_key"}),
        ("/internal/adapters/unload", {"tenant": "t1"}),
        ("/internal/adapters/status", []),
    ],
)
def test_bad_bodies_are_400_problem_without_validation_internals(env, path, body):
    _, _, client = env
    problem = assert_problem(client.post(path, json=body), 400, "invalid_request")
    assert "input" not in problem and "loc" not in problem
    assert "pydantic" not in problem["details"]


def test_malformed_json_is_400(env):
    _, _, client = env
    resp = client.post(
        "/internal/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(resp, 400, "invalid_request")


def test_unknown_route_and_method_are_problems(env):
    _, _, client = env
    assert_problem(client.get("/internal/nope"), 404, "not_found")
    assert_problem(client.get("/internal/generate"), 405, "method_not_allowed")


def test_unexpected_error_is_500_without_internals(env):
    engine, _, client = env
    engine.boom = True
    body = assert_problem(client.post("/internal/generate", json=gen_body()), 500, "internal_error")
    assert "secret" not in body["details"] and "/opt" not in body["details"]
