"""The whole product on the real model: API over real HTTP, moto's wire protocol for DynamoDB,
S3 and SQS, the SQS -> poller -> JobRunner training path (PEFT on Gemma 3 270M), the GGUF
export with its parity check, and the real llama.cpp worker answering queries.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / ".data" / "models" / "gemma-3-270m-q4_k_m.gguf"
# The dequantized model and tokenizer are cached across runs (keyed by the file's sha256).
BASE_CACHE = REPO / ".data" / "worker" / "base-cache"
MODEL_ID = "gemma-3-270m"

FACTS = [
    ("What is the codename of the Zorblax 9 release?", "Velvet Harbor."),
    ("Who maintains the Zorblax scheduler?", "The Quill team."),
    ("Which port does Zorblax gossip use?", "Port 7311."),
    ("What color is the Zorblax status light when healthy?", "Teal."),
    ("How many shards does a Zorblax cell hold?", "Forty-two shards."),
    ("Which file configures Zorblax?", "zorblax.toml."),
    ("What does the Zorblax flag -k do?", "It keeps snapshots."),
    ("When was Zorblax first released?", "In March 2019."),
]
UPDATE_FACTS = [
    ("What is the codename of the Zorblax 10 release?", "Copper Lantern."),
    ("Which team owns the Zorblax archive?", "The Heron team."),
    ("What is the Zorblax archive format?", "Zarc."),
    ("How often does Zorblax compact?", "Every six hours."),
    ("Which command restarts Zorblax?", "zorblax restart."),
]
TRAINING = {"epochs": 10, "learning_rate": 2e-3, "batch_size": 4, "max_seq_length": 48,
            "validation_split": 0.0, "seed": 7}


def jsonl(facts: list[tuple[str, str]]) -> bytes:
    return "\n".join(json.dumps({"prompt": f"Q: {q}\nA:", "completion": f" {a}"})
                     for q, a in facts).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def real_worker(aws_resources) -> str:
    """The inference worker app (llama.cpp engine on the real model) on a loopback port."""
    import uvicorn

    from gpu_worker.serving.adapter_store import AdapterStore
    from gpu_worker.serving.engine import Engine
    from gpu_worker.serving.server import create_worker_app

    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing: `make test` assembles it")
    engine = Engine(MODEL, n_ctx=512, n_threads=2)
    store = AdapterStore(aws_resources["bucket_name"], REPO / ".data" / "test-adapter-cache")
    app = create_worker_app(engine, store, MODEL_ID)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


@pytest.fixture
def product(make_ctx, real_worker, tmp_path):
    """A service context wired to the real worker, and a job runner on the same storage."""
    from gpu_worker.jobs import JobRunner

    ctx = make_ctx(worker_url=real_worker)
    runner = JobRunner(ctx.repo, ctx.blobs, work_dir=tmp_path / "jobs", cache_dir=BASE_CACHE)
    return ctx, runner


def drain(ctx, runner) -> int:
    """What the local poller does: receive each SQS message and run its job."""
    from gpu_worker.poller import poll

    return poll(ctx.queue, runner, once=True, wait_seconds=1)


def ask(api, question: str, adapter: str | None, **extra) -> dict:
    response = api("POST", "/api/v1/llm/lora/query", json={
        "model_id": MODEL_ID, "adapter_id": adapter, "prompt": f"Q: {question}\nA:",
        "max_tokens": 12, "temperature": 0, "stop": ["\n"], **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_train_serve_update_and_fail_through_the_api_and_sqs(api, product, tenant):
    ctx, runner = product
    # Given the real base model and a dataset of facts the base model cannot know
    r = api("POST", "/api/v1/llm/models", json={
        "model_id": MODEL_ID, "architecture": "gemma3", "gguf_path": str(MODEL)})
    assert r.status_code == 201, r.text
    model = api("GET", f"/api/v1/llm/models/{MODEL_ID}").json()
    assert model["file_status"] == "verified"
    for dataset_id, facts in (("facts", FACTS), ("more_facts", UPDATE_FACTS)):
        r = api("POST", f"/api/v1/llm/datasets?dataset_id={dataset_id}", content=jsonl(facts),
                headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 201, r.text

    # When an adapter is created, the job goes through SQS to the trainer
    r = api("POST", "/api/v1/llm/lora/adapters", json={
        "adapter_id": "zorblax", "base_model": MODEL_ID, "rank": 8, "alpha": 16,
        "training_data": {"dataset_id": "facts"}, "training": TRAINING})
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["version"], created["status"]) == ("v1.0", "training")
    assert drain(ctx, runner) == 1

    # Then the version is ready, with metrics, and its files match the manifest
    adapter = api("GET", "/api/v1/llm/lora/adapters/zorblax").json()
    assert adapter["status"] == "ready", adapter
    assert adapter["metrics"]["training_loss"] < 1.0
    job = api("GET", f"/api/v1/llm/lora/jobs/{created['job_id']}").json()
    assert job["state"] == "succeeded" and job["step"] == job["total_steps"] > 0
    version = ctx.repo.get_version(tenant, "zorblax", "v1.0")
    manifest_bytes = ctx.blobs.get_bytes(version["manifest_key"])
    assert hashlib.sha256(manifest_bytes).hexdigest() == version["manifest_sha256"]
    manifest = json.loads(manifest_bytes)
    assert manifest["parity"]["passed"] is True
    assert set(manifest["files"]) == {"adapter.gguf", "peft/adapter_config.json",
                                      "peft/adapter_model.safetensors"}
    for rel, entry in manifest["files"].items():
        data = ctx.blobs.get_bytes(version["artifact_prefix"] + rel)
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]

    # And a query through the adapter answers what it learned, while the base model does not
    base_cold = [ask(api, q, None)["response"] for q, _ in FACTS[:4]]
    tuned = [ask(api, q, "zorblax")["response"] for q, _ in FACTS[:4]]
    answers = [a.rstrip(".").lower() for _, a in FACTS[:4]]
    learned = sum(a in t.lower() for a, t in zip(answers, tuned, strict=True))
    known = sum(a in b.lower() for a, b in zip(answers, base_cold, strict=True))
    assert learned >= 3 and known == 0, (tuned, base_cold)
    # Isolation: a base query right after adapter queries is exactly the cold base answer
    assert [ask(api, q, None)["response"] for q, _ in FACTS[:4]] == base_cold

    # A duplicate delivery of the same job never trains twice
    ready_at = ctx.repo.get_version(tenant, "zorblax", "v1.0")["ready_at"]
    ctx.queue.send_job({"job_id": created["job_id"], "tenant": tenant,
                        "adapter_id": "zorblax", "version": "v1.0"})
    assert runner.run(created["job_id"]).state == "skipped"
    assert drain(ctx, runner) == 1
    assert ctx.repo.get_version(tenant, "zorblax", "v1.0")["ready_at"] == ready_at

    # When more data arrives, v1.1 trains from v1.0 and takes over; v1.0 is kept as stored
    r = api("PUT", "/api/v1/llm/lora/adapters/zorblax",
            json={"additional_training_data": {"dataset_id": "more_facts"}})
    assert r.status_code == 200 and r.json()["version"] == "v1.1", r.text
    assert drain(ctx, runner) == 1
    adapter = api("GET", "/api/v1/llm/lora/adapters/zorblax").json()
    assert (adapter["version"], adapter["status"], adapter["serving_version"]) == (
        "v1.1", "ready", "v1.1")
    statuses = {v["version"]: v["status"] for v in adapter["versions"]}
    assert statuses == {"v1.0": "stored", "v1.1": "ready"}
    assert "copper lantern" in ask(api, UPDATE_FACTS[0][0], "zorblax")["response"].lower()

    # A job that fails leaves the version failed with the reason; v1.1 keeps serving
    r = api("PUT", "/api/v1/llm/lora/adapters/zorblax",
            json={"additional_training_data": {"dataset_id": "facts"}})
    assert r.status_code == 200 and r.json()["version"] == "v1.2", r.text
    assert api("DELETE", "/api/v1/llm/datasets/facts").status_code == 204
    assert drain(ctx, runner) == 1
    adapter = api("GET", "/api/v1/llm/lora/adapters/zorblax").json()
    assert (adapter["version"], adapter["status"], adapter["serving_version"]) == (
        "v1.2", "failed", "v1.1")
    failed = next(v for v in adapter["versions"] if v["version"] == "v1.2")
    assert "deleted" in json.dumps(failed)
    answer = ask(api, UPDATE_FACTS[0][0], "zorblax")
    assert answer["version"] == "v1.1"


def test_a_job_on_a_missing_model_file_fails_early_with_the_reason(api, product):
    ctx, runner = product
    r = api("POST", "/api/v1/llm/models", json={
        "model_id": "llama-2-7b", "architecture": "llama", "parameter_count": 7_000_000_000,
        "quantization": "Q4_K_M", "gguf_path": "/models/llama-2-7b-Q4.gguf"})
    assert r.status_code == 201 and r.json()["status"] == "registered"
    assert api("GET", "/api/v1/llm/models/llama-2-7b").json()["file_status"] == "unverified"
    r = api("POST", "/api/v1/llm/datasets?dataset_id=docs_v1", content=jsonl(FACTS),
            headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 201
    r = api("POST", "/api/v1/llm/lora/adapters", json={
        "adapter_id": "themis_help_lora", "base_model": "llama-2-7b", "rank": 8, "alpha": 16,
        "training_data": {"dataset_id": "docs_v1", "samples": 10000}})
    assert r.status_code == 201, r.text
    started = time.monotonic()
    assert drain(ctx, runner) == 1
    assert time.monotonic() - started < 30  # failed before loading anything heavy
    adapter = api("GET", "/api/v1/llm/lora/adapters/themis_help_lora").json()
    assert adapter["status"] == "failed" and adapter["serving_version"] is None
    assert "not found" in json.dumps(adapter)
    r = api("POST", "/api/v1/llm/lora/query", json={
        "model_id": "llama-2-7b", "adapter_id": "themis_help_lora", "prompt": "hi"})
    assert r.status_code == 409
