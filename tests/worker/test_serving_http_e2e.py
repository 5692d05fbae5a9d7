"""The worker over real HTTP: uvicorn on a loopback port, the real model, adapters from moto S3."""

from __future__ import annotations

import hashlib
import threading
import time

import httpx
import pytest
import uvicorn

from gpu_worker.serving.adapter_store import AdapterStore
from gpu_worker.serving.server import create_worker_app

pytestmark = pytest.mark.e2e

MODEL_ID = "gemma-3-270m-q4_k_m"
PROMPT = "The capital of France is"


def ref_for(serve_s3, path, adapter_id, version="v1.0", tenant="tenant-1", sha=None):
    key = f"adapters/{tenant}/{adapter_id}/{version}/adapter.gguf"
    body = path.read_bytes()
    serve_s3["client"].put_object(Bucket=serve_s3["bucket"], Key=key, Body=body)
    return {
        "tenant": tenant,
        "adapter_id": adapter_id,
        "version": version,
        "gguf_key": key,
        "gguf_sha256": sha or hashlib.sha256(body).hexdigest(),
        "scale": 1.0,
    }


@pytest.fixture(scope="module")
def worker(serve_s3, serve_model_path, serve_engine_kwargs, tmp_path_factory):
    """(base_url, engine): the app served by uvicorn in a thread on a free port."""
    from gpu_worker.serving.engine import Engine

    engine = Engine(serve_model_path, **serve_engine_kwargs, max_adapters=2)
    store = AdapterStore(serve_s3["bucket"], tmp_path_factory.mktemp("serve_cache"))
    app = create_worker_app(engine, store, MODEL_ID)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", engine
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


@pytest.fixture
def http(worker):
    with httpx.Client(base_url=worker[0], timeout=60) as client:
        yield client


def generate(http, adapter=None, **over):
    body = {
        "model_id": MODEL_ID,
        "adapter": adapter,
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": [],
        "seed": 1,
    } | over
    return http.post("/internal/generate", json=body)


def test_worker_api_end_to_end(http, worker, serve_s3, serve_lora_files):
    _, engine = worker
    health = http.get("/internal/health").json()
    assert health == {
        "model_id": MODEL_ID,
        "model_loaded": True,
        "architecture": "gemma3",
        "n_ctx": 512,
    }
    ref_a = ref_for(serve_s3, serve_lora_files["a"], "adapter-a")
    ref_b = ref_for(serve_s3, serve_lora_files["b"], "adapter-b")

    # Given the bare base, When the same prompt goes through adapter A, Then text changes.
    base = generate(http).json()
    assert base["adapter_cache_hit"] is None
    assert base["completion_tokens"] == 12 and base["prompt_tokens"] > 0

    loaded = http.post("/internal/adapters/load", json=ref_a).json()
    assert loaded["cache_hit"] is False and loaded["memory_usage_mb"] > 0
    assert http.post("/internal/adapters/load", json=ref_a).json()["cache_hit"] is True

    with_a = generate(http, ref_a).json()
    assert with_a["adapter_cache_hit"] is True
    assert with_a["text"] != base["text"]

    # A query for an adapter not in memory loads it (a miss) and answers.
    with_b = generate(http, ref_b).json()
    assert with_b["adapter_cache_hit"] is False
    assert with_b["text"] not in (base["text"], with_a["text"])
    assert generate(http).json()["text"] == base["text"]

    status = http.post("/internal/adapters/status", json=ref_b).json()
    assert status["is_loaded"] is True and status["last_used"] is not None

    stats = http.get("/internal/stats").json()
    assert stats["loaded_adapters"] == 2
    assert stats["cache_misses"] == 2  # A by /load, B by the query
    assert stats["cache_hits"] == 2  # A by the second /load and by its query
    assert stats["total_inferences"] == 4
    assert stats["memory_usage_mb"] > 0 and stats["avg_load_time_ms"] > 0

    assert http.post("/internal/adapters/unload", json=ref_a).json() == {"unloaded": True}
    assert http.post("/internal/adapters/status", json=ref_a).json()["is_loaded"] is False
    assert http.post("/internal/adapters/unload", json=ref_a).json() == {"unloaded": False}
    # Unloaded is not gone: the next query loads it again from the local file cache.
    again = generate(http, ref_a).json()
    assert again["adapter_cache_hit"] is False and again["text"] == with_a["text"]


def test_checksum_mismatch_is_refused_over_http(http, serve_s3, serve_lora_files):
    ref = ref_for(serve_s3, serve_lora_files["c"], "adapter-c", sha="0" * 64)
    resp = http.post("/internal/adapters/load", json=ref)
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["error"] == "adapter_checksum_mismatch"
    assert http.post("/internal/adapters/status", json=ref).json()["is_loaded"] is False
    assert generate(http, ref).status_code == 422


def test_missing_adapter_file_and_model_mismatch_over_http(http, serve_lora_files):
    ref = {
        "tenant": "t",
        "adapter_id": "ghost",
        "version": "v1.0",
        "gguf_key": "adapters/t/ghost/v1.0/adapter.gguf",
        "gguf_sha256": "1" * 64,
        "scale": 1.0,
    }
    assert (
        http.post("/internal/adapters/load", json=ref).json()["error"] == "adapter_file_not_found"
    )
    resp = generate(http, model_id="some-other-model")
    assert resp.status_code == 409 and resp.json()["error"] == "model_mismatch"


def test_invalid_adapter_file_is_422_over_http(http, serve_s3, serve_lora_files):
    ref = ref_for(serve_s3, serve_lora_files["wrong_arch"], "adapter-wrong")
    resp = http.post("/internal/adapters/load", json=ref)
    assert resp.status_code == 422 and resp.json()["error"] == "adapter_invalid"


def test_concurrent_requests_are_serialized_and_isolated(http, worker, serve_s3, serve_lora_files):
    base_url, _ = worker
    ref_a = ref_for(serve_s3, serve_lora_files["a"], "adapter-a")
    ref_b = ref_for(serve_s3, serve_lora_files["b"], "adapter-b")
    expected = {
        "a": generate(http, ref_a).json()["text"],
        "b": generate(http, ref_b).json()["text"],
        None: generate(http).json()["text"],
    }
    results: dict[int, tuple[str | None, str]] = {}

    def call(i: int, name: str | None) -> None:
        ref = {"a": ref_a, "b": ref_b, None: None}[name]
        with httpx.Client(base_url=base_url, timeout=120) as client:
            results[i] = (name, generate(client, ref).json()["text"])

    order = ["a", "b", None, "b", "a", None]
    threads = [threading.Thread(target=call, args=(i, n)) for i, n in enumerate(order)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(order)
    for name, text in results.values():
        assert text == expected[name]


def test_status_stats_and_cache_hits_answer_while_a_generate_runs(
    http, worker, serve_s3, serve_lora_files
):
    base_url, _ = worker
    ref_a = ref_for(serve_s3, serve_lora_files["a"], "adapter-a")
    assert http.post("/internal/adapters/load", json=ref_a).status_code == 200

    def long_generate() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            assert generate(client, max_tokens=96).status_code == 200

    runner = threading.Thread(target=long_generate)
    runner.start()
    time.sleep(0.3)  # let it take the engine lock
    assert http.get("/internal/stats").status_code == 200
    assert http.post("/internal/adapters/status", json=ref_a).json()["is_loaded"] is True
    assert http.post("/internal/adapters/load", json=ref_a).json()["cache_hit"] is True
    still_running = runner.is_alive()
    runner.join()
    assert still_running, "the side requests should not have waited for the generate"


def test_build_app_from_settings_serves_health(serve_model_path, serve_s3, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from gpu_worker.runtime import build_worker_app as build_app
    from gpu_worker.serving.settings import WorkerSettings

    monkeypatch.setenv("LORA_WORKER_MODEL_PATH", str(serve_model_path))
    monkeypatch.setenv("LORA_WORKER_MODEL_ID", MODEL_ID)
    monkeypatch.setenv("LORA_WORKER_BUCKET_NAME", serve_s3["bucket"])
    monkeypatch.setenv("LORA_WORKER_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LORA_WORKER_N_CTX", "256")
    monkeypatch.setenv("LORA_WORKER_N_THREADS", "1")
    app = build_app(WorkerSettings())
    try:
        health = TestClient(app).get("/internal/health").json()
        assert health["model_loaded"] is True and health["n_ctx"] == 256
    finally:
        app.state.engine.close()
