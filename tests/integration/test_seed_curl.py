"""The API reference's curl examples, run as written with curl against the local stack that
`make serve` starts (`python -m devstack serve`, here without the worker) and a token from
`python -m devstack token` — the two commands the README gives.

Each command below is checked to appear in the reference verbatim (modulo line breaks), so
this test and the reference cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEED = REPO.parent / "shared" / "seed" / "lora-api-reference.txt"

REGISTER = """curl -X POST http://localhost:8080/api/v1/llm/models \\
-H "Authorization: Bearer $TOKEN" \\
-H "Content-Type: application/json" \\
-d '{
"model_id": "llama-2-7b",
"architecture": "llama",
"parameter_count": 7000000000,
"quantization": "Q4_K_M",
"gguf_path": "/models/llama-2-7b-Q4.gguf"
}'"""
GET_MODEL = """curl -X GET http://localhost:8080/api/v1/llm/models/llama-2-7b \\
-H "Authorization: Bearer $TOKEN\""""
LIST_MODELS = """curl -X GET "http://localhost:8080/api/v1/llm/models?architecture=llama&limit=10" \\
-H "Authorization: Bearer $TOKEN\""""
DELETE_MODEL = """curl -X DELETE http://localhost:8080/api/v1/llm/models/llama-2-7b \\
-H "Authorization: Bearer $TOKEN\""""
CREATE_ADAPTER = """curl -X POST http://localhost:8080/api/v1/llm/lora/adapters \\
-H "Authorization: Bearer $TOKEN" \\
-H "Content-Type: application/json" \\
-d '{
"adapter_id": "themis_help_lora",
"base_model": "llama-2-7b",
"task": "documentation_qa",
"rank": 8,
"alpha": 16,
"training_data": {
"dataset_id": "docs_v1",
"samples": 10000
}
}'"""
GET_ADAPTER = """curl -X GET http://localhost:8080/api/v1/llm/lora/adapters/themis_help_lora \\
-H "Authorization: Bearer $TOKEN\""""
UPDATE_ADAPTER = """curl -X PUT http://localhost:8080/api/v1/llm/lora/adapters/themis_help_lora \\
-H "Authorization: Bearer $TOKEN" \\
-H "Content-Type: application/json" \\
-d '{
"additional_training_data": {
"dataset_id": "feedback_v1",
"samples": 500
}
}'"""
DELETE_VERSION = """curl -X DELETE "http://localhost:8080/api/v1/llm/lora/adapters/themis_help_lora?version=v1.0" \\
-H "Authorization: Bearer $TOKEN\""""
DELETE_ADAPTER = """curl -X DELETE http://localhost:8080/api/v1/llm/lora/adapters/themis_help_lora \\
-H "Authorization: Bearer $TOKEN\""""
LIST_ADAPTERS = """curl -X GET "http://localhost:8080/api/v1/llm/lora/adapters?base_model=llama-2-7b&status=ready" \\
-H "Authorization: Bearer $TOKEN\""""
LOAD = """curl -X POST http://localhost:8080/api/v1/llm/lora/adapters/themis_help_lora/load \\
-H "Authorization: Bearer $TOKEN\""""
UNLOAD = """curl -X POST http://localhost:8080/api/v1/llm/lora/adapters/themis_help_lora/unload \\
-H "Authorization: Bearer $TOKEN\""""
STATUS = """curl -X GET http://localhost:8080/api/v1/llm/lora/adapters/themis_help_lora/status \\
-H "Authorization: Bearer $TOKEN\""""
QUERY = """curl -X POST http://localhost:8080/api/v1/llm/lora/query \\
-H "Authorization: Bearer $TOKEN" \\
-H "Content-Type: application/json" \\
-d '{
"model_id": "llama-2-7b",
"adapter_id": "themis_help_lora",
"prompt": "How do I enable sharding in ThemisDB?",
"max_tokens": 500,
"temperature": 0.7
}'"""
STATS = """curl -X GET http://localhost:8080/api/v1/llm/lora/stats \\
-H "Authorization: Bearer $TOKEN\""""
HEALTH = """curl -X GET http://localhost:8080/api/v1/llm/lora/health \\
-H "Authorization: Bearer $TOKEN\""""
PAGE_1 = """curl "http://localhost:8080/api/v1/llm/lora/adapters?limit=10&offset=0\""""
PAGE_2 = """curl "http://localhost:8080/api/v1/llm/lora/adapters?limit=10&offset=10\""""
ALL = [REGISTER, GET_MODEL, LIST_MODELS, DELETE_MODEL, CREATE_ADAPTER, GET_ADAPTER,
       UPDATE_ADAPTER, DELETE_VERSION, DELETE_ADAPTER, LIST_ADAPTERS, LOAD, UNLOAD, STATUS,
       QUERY, STATS, HEALTH, PAGE_1, PAGE_2]


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_every_command_here_is_in_the_reference_verbatim():
    if not SEED.exists():
        pytest.fail(f"the API reference is missing at {SEED}")
    seed = squash(SEED.read_text())
    for command in ALL:
        assert squash(command) in seed, command.splitlines()[0]
    assert squash(seed).count("curl") == len(ALL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`python -m devstack serve --no-worker` on :8080, as `make serve` runs it."""
    data = tmp_path_factory.mktemp("stack-data")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(REPO / p) for p in (".", "layers/common/python"))}
    env.pop("AWS_ENDPOINT_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "serve", "--data-dir", str(data), "--no-worker",
         "--no-persist"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen("http://localhost:8080/api/v1/llm/lora/health", timeout=2)
        except urllib.error.HTTPError:
            break  # it answered (401 without a token)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("local stack did not start:\n" + proc.stdout.read().decode())
            time.sleep(0.3)
    token = subprocess.run(
        [sys.executable, "-m", "devstack", "token", "--data-dir", str(data)], cwd=REPO, env=env,
        check=True, capture_output=True, text=True).stdout.strip()
    yield {"env": {**env, "TOKEN": token}, "data": data}
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def curl(stack, command: str) -> tuple[int, dict | None, dict[str, str]]:
    """Run the command as written (bash expands $TOKEN); return status, JSON body, headers."""
    out = subprocess.run(["bash", "-c", command + " -s -i"], env=stack["env"],
                         capture_output=True, text=True, check=True).stdout
    head, _, body = out.partition("\n\n")  # text mode turned CRLF into LF
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, json.loads(body) if body.strip() else None, headers


def upload(stack, dataset_id: str, path: Path) -> None:
    status, body, _ = curl(stack, (
        f'curl -X POST "http://localhost:8080/api/v1/llm/datasets?dataset_id={dataset_id}" '
        '-H "Authorization: Bearer $TOKEN" -H "Content-Type: application/x-ndjson" '
        f'--data-binary @{path}'))
    assert status == 201, body


def finish_training(stack, job_id: str) -> None:
    """Do what the worker does when a job succeeds (the worker is not part of this test):
    claim the job, store the version's files and flip it to ready in one transaction."""
    import boto3

    from devstack.stack import MOTO_PORT
    from lora_common import keys
    from lora_common.repository import DynamoRepository

    kw = {"endpoint_url": f"http://127.0.0.1:{MOTO_PORT}", "region_name": "us-east-1",
          "aws_access_key_id": "local", "aws_secret_access_key": "local"}
    table = boto3.client("dynamodb", **kw).list_tables()["TableNames"][0]
    s3 = boto3.client("s3", **kw)
    bucket = s3.list_buckets()["Buckets"][0]["Name"]
    repo = DynamoRepository(table, boto3.client("dynamodb", **kw))
    job = repo.claim_job(job_id, time.time())
    prefix = keys.version_prefix(job["tenant"], job["adapter_id"], job["version"])
    s3.put_object(Bucket=bucket, Key=prefix + "adapter.gguf", Body=b"GGUF")
    s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=b"{}")
    repo.mark_version_ready(job, {
        "artifact_prefix": prefix, "manifest_key": prefix + "manifest.json",
        "manifest_sha256": "0" * 64, "gguf_key": prefix + "adapter.gguf",
        "gguf_sha256": "1" * 64, "gguf_size": 4}, {"training_loss": 0.15,
                                                    "validation_accuracy": 0.92}, time.time())


def test_the_reference_examples_as_written(stack):
    # Models: the reference's order, then the model again for the adapter examples.
    status, body, headers = curl(stack, REGISTER)
    assert status == 201 and body["model_id"] == "llama-2-7b" and body["status"] == "registered"
    assert headers["x-ratelimit-limit"] == "1000"
    status, body, _ = curl(stack, GET_MODEL)
    assert status == 200 and body["architecture"] == "llama"
    assert body["parameter_count"] == 7_000_000_000 and body["file_status"] == "unverified"
    status, body, _ = curl(stack, LIST_MODELS)
    assert status == 200 and body["total"] == 1 and body["limit"] == 10 and body["offset"] == 0
    assert body["models"][0]["model_id"] == "llama-2-7b"
    status, body, _ = curl(stack, DELETE_MODEL)
    assert status == 204 and body is None
    assert curl(stack, GET_MODEL)[0] == 404
    assert curl(stack, REGISTER)[0] == 201

    # Adapters: the datasets the examples name are uploaded first (README).
    upload(stack, "docs_v1", REPO / "demo" / "docs_qa.jsonl")
    upload(stack, "feedback_v1", REPO / "demo" / "feedback_qa.jsonl")
    status, created, _ = curl(stack, CREATE_ADAPTER)
    assert status == 201, created
    assert (created["adapter_id"], created["version"], created["status"]) == (
        "themis_help_lora", "v1.0", "training")
    assert curl(stack, CREATE_ADAPTER)[0] == 409  # duplicate adapter_id
    status, body, _ = curl(stack, GET_ADAPTER)
    assert status == 200 and body["status"] == "training" and body["base_model"] == "llama-2-7b"
    finish_training(stack, created["job_id"])
    status, body, _ = curl(stack, GET_ADAPTER)
    assert status == 200 and body["status"] == "ready" and body["version"] == "v1.0"
    assert body["metrics"] == {"training_loss": 0.15, "validation_accuracy": 0.92}
    status, body, _ = curl(stack, UPDATE_ADAPTER)
    assert status == 200, body
    assert (body["version"], body["status"]) == ("v1.1", "training") and body["job_id"]
    status, body, _ = curl(stack, LIST_ADAPTERS)
    assert status == 200 and body["total"] == 0  # the newest version is training, not ready
    status, body, _ = curl(stack, "curl http://localhost:8080/api/v1/llm/lora/adapters "
                                  '-H "Authorization: Bearer $TOKEN"')
    assert body["adapters"][0]["is_loaded"] is False and body["total"] == 1

    # Lifecycle, query, monitoring need the worker, which this stack runs without.
    for command in (LOAD, UNLOAD, STATUS, QUERY, STATS):
        status, body, headers = curl(stack, command)
        assert status == 503, (command, body)
        assert headers["content-type"].startswith("application/problem+json")
        assert body["status"] == 503 and "worker" in body["details"].lower()
    status, body, _ = curl(stack, HEALTH)
    assert status == 503 and body["status"] == "unhealthy"
    assert (body["storage"], body["training"]) == ("ok", "ok") and body["manager"] != "ok"
    assert (body["checks_passed"], body["checks_failed"]) == (2, 1)

    # Pagination examples carry no token: 401 with the reference's body.
    for command in (PAGE_1, PAGE_2):
        status, body, headers = curl(stack, command)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert body["error"] == "Unauthorized" and body["details"] == (
            "Valid Bearer Token required. Include 'Authorization: Bearer <token>' header.")

    # Deletes: one version, then everything; the model can go once no adapter uses it.
    assert curl(stack, DELETE_MODEL)[0] == 409
    status, body, _ = curl(stack, DELETE_VERSION)
    assert status == 204, body
    status, body, _ = curl(stack, DELETE_ADAPTER)
    assert status == 204, body
    assert curl(stack, GET_ADAPTER)[0] == 404
    assert curl(stack, DELETE_MODEL)[0] == 204


def test_curl_is_installed():
    assert shutil.which("curl"), "the reference's examples need curl"
