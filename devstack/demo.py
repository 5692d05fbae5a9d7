"""The main job, through the public API only: register Gemma 3 270M, upload the docs Q&A
dataset, train an adapter, watch it train, load it, and ask trained and held-out questions
through the bare base model and through the adapter side by side.

A second run reuses everything: the model, the dataset and a ready adapter are kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from devstack.stack import DEFAULT_MODEL_FILE, DEFAULT_MODEL_ID, REPO, mint_token, wait_for

DATASET_ID = "product_docs_qa"
ADAPTER_ID = "product_docs_helper"
TRAINED_SHOWN = [
    "Which port does the binary wire protocol use?",
    "What is the default rate limit?",
    "Which header tells how many requests remain?",
    "What does the status stored mean?",
]
TRAINING = {"epochs": 6, "learning_rate": 2e-3, "batch_size": 4, "max_seq_length": 64,
            "validation_split": 0.1, "seed": 42}


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body=None, *, content_type="application/json",
             raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                             else None)
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                text = response.read()
                return response.status, json.loads(text) if text else {}
        except urllib.error.HTTPError as err:
            text = err.read()
            return err.code, json.loads(text) if text else {}


def expect(status: int, body: dict, *ok: int) -> dict:
    if status not in ok:
        raise SystemExit(f"unexpected {status}: {json.dumps(body, indent=2)}")
    return body


def ask(api: Api, question: str, adapter: str | None) -> str:
    status, body = api.call("POST", "/api/v1/llm/lora/query", {
        "model_id": DEFAULT_MODEL_ID, "adapter_id": adapter, "prompt": f"Q: {question}\nA:",
        "max_tokens": 24, "temperature": 0, "stop": ["\n", "Q:"], "user_id": "demo",
    })
    return expect(status, body, 200)["response"].strip()


def table(rows: list[tuple[str, str, str, str]]) -> None:
    for question, expected, base, tuned in rows:
        print(f"\n  Q: {question}\n     expected: {expected}\n     base    : {base!r}"
              f"\n     adapter : {tuned!r}")


def contains_answer(answer: str, expected: str) -> bool:
    norm = lambda s: "".join(c for c in s.lower() if c.isalnum())  # noqa: E731
    return norm(expected.rstrip(".")) in norm(answer)


@contextmanager
def local_stack(data_dir: str, url: str):
    """Use the stack already on `url`, or start one for the duration of the block."""
    if wait_for(url + "/api/v1/llm/lora/health", 1):
        yield
        return
    print("Starting the local stack (API :8080, worker, training poller)...", flush=True)
    log_path = Path(data_dir) / "stack.log"
    with log_path.open("a") as log:
        stack = subprocess.Popen([sys.executable, "-m", "devstack", "serve",
                                  "--data-dir", data_dir], cwd=REPO, stdout=log, stderr=log)
        try:
            if not wait_for(url + "/api/v1/llm/lora/health", 180, stack):
                raise SystemExit(f"the local stack did not start; see {log_path}")
            yield
        finally:
            stack.terminate()
            stack.wait(timeout=90)


def run_demo(data_dir: str, url: str) -> int:
    with local_stack(data_dir, url):
        return _demo(data_dir, url)


def register_default_model(api: Api, data_dir: str) -> dict:
    model_path = str((Path(data_dir) / DEFAULT_MODEL_FILE).resolve())
    status, body = api.call("POST", "/api/v1/llm/models", {
        "model_id": DEFAULT_MODEL_ID, "architecture": "gemma3", "gguf_path": model_path,
        "quantization": "Q4_K_M", "description": "Gemma 3 270M, Q4_K_M"})
    expect(status, body, 201, 409)
    _, model = api.call("GET", f"/api/v1/llm/models/{DEFAULT_MODEL_ID}")
    return model


def upload_dataset(api: Api, dataset_id: str, path: Path) -> dict:
    status, body = api.call("POST", f"/api/v1/llm/datasets?dataset_id={dataset_id}",
                            raw=path.read_bytes(), content_type="application/x-ndjson")
    expect(status, body, 201, 409)
    _, dataset = api.call("GET", f"/api/v1/llm/datasets/{dataset_id}")
    return dataset


def _demo(data_dir: str, url: str) -> int:
    started = time.monotonic()
    api = Api(url, mint_token(data_dir, sub="demo-user", tenant="local",
                              scopes=["lora:read", "lora:write", "lora:admin"], ttl_seconds=3600))
    wait_until_healthy(api)
    print(f"1. Register {DEFAULT_MODEL_ID}")
    model = register_default_model(api, data_dir)
    print("   " + json.dumps({k: model.get(k) for k in (
        "architecture", "parameter_count", "quantization", "file_status", "gguf_path")}))

    print(f"2. Upload the docs Q&A dataset as {DATASET_ID!r}")
    dataset = upload_dataset(api, DATASET_ID, REPO / "demo" / "docs_qa.jsonl")
    print(f"   {dataset.get('records')} records")

    print(f"3. Train {ADAPTER_ID} (rank 8, alpha 16, q/k/v/o) on {DATASET_ID}")
    adapter = train_adapter(api, ADAPTER_ID, DATASET_ID, TRAINING)
    print(f"4. Load {ADAPTER_ID}")
    status, body = api.call("POST", f"/api/v1/llm/lora/adapters/{ADAPTER_ID}/load")
    print(f"   {json.dumps(expect(status, body, 200))}")

    heldout = json.loads((REPO / "demo" / "heldout.json").read_text())
    trained = {}
    for line in (REPO / "demo" / "docs_qa.jsonl").read_text().splitlines():
        record = json.loads(line)
        trained[record["prompt"].removeprefix("Q: ").removesuffix("\nA:")] = (
            record["completion"].strip())
    rows = {"trained": [(q, trained[q]) for q in TRAINED_SHOWN],
            "held-out (reworded, never trained on)": [(h["question"], h["answer"])
                                                      for h in heldout]}
    score = {"base": 0, "adapter": 0}
    total = 0
    for title, pairs in rows.items():
        print(f"\n5. Ask {title} questions: base model vs {ADAPTER_ID}")
        results = []
        for question, expected in pairs:
            base = ask(api, question, None)
            tuned = ask(api, question, ADAPTER_ID)
            score["base"] += contains_answer(base, expected)
            score["adapter"] += contains_answer(tuned, expected)
            total += 1
            results.append((question, expected, base, tuned))
        table(results)
    print(f"\n   answers containing the expected fact: base {score['base']}/{total}, "
          f"adapter {score['adapter']}/{total}")

    print("\n6. Adapter metrics and service stats")
    print("   " + json.dumps({"version": adapter["version"], "status": adapter["status"],
                               "metrics": adapter.get("metrics")}))
    status, body = api.call("GET", "/api/v1/llm/lora/stats")
    print("   " + json.dumps(expect(status, body, 200)))
    print(f"\nDone in {time.monotonic() - started:.0f} s.")
    return 0 if score["adapter"] > score["base"] else 1


def wait_until_healthy(api: Api, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, body = api.call("GET", "/api/v1/llm/lora/health")
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the stack is not healthy: {json.dumps(body)}")
        time.sleep(2)


def train_adapter(api: Api, adapter_id: str, dataset_id: str, training: dict) -> dict:
    """Create the adapter and follow its job; reuse it when a version is already ready."""
    status, existing = api.call("GET", f"/api/v1/llm/lora/adapters/{adapter_id}")
    if status == 200 and existing.get("serving_version"):
        print(f"   {adapter_id} {existing['serving_version']} is already trained; reusing it")
        return existing
    if status == 200:  # a failed or interrupted earlier attempt: start clean
        api.call("DELETE", f"/api/v1/llm/lora/adapters/{adapter_id}")
    status, body = api.call("POST", "/api/v1/llm/lora/adapters", {
        "adapter_id": adapter_id, "base_model": DEFAULT_MODEL_ID, "task": "documentation_qa",
        "rank": 8, "alpha": 16, "training_data": {"dataset_id": dataset_id},
        "training": training, "description": "Answers questions about this service"})
    created = expect(status, body, 201)
    print(f"   {json.dumps(created)}")
    last = None
    while True:
        _, job = api.call("GET", f"/api/v1/llm/lora/jobs/{created['job_id']}")
        line = (job.get("state"), job.get("step"))
        if line != last:
            loss = job.get("loss")
            print(f"   job {job.get('state')}: step {job.get('step') or 0}/"
                  f"{job.get('total_steps') or '?'}"
                  + (f" loss {loss:.3f}" if isinstance(loss, (int, float)) else ""), flush=True)
            last = line
        if job.get("state") in ("succeeded", "failed"):
            break
        time.sleep(2)
    _, adapter = api.call("GET", f"/api/v1/llm/lora/adapters/{adapter_id}")
    if adapter.get("status") != "ready":
        raise SystemExit(f"training did not produce a ready adapter: {json.dumps(adapter)}")
    return adapter
