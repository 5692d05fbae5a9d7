"""Adapters, jobs and datasets over real HTTP (uvicorn) against moto."""

from __future__ import annotations

import json
import threading

import pytest
from test_api_models import _problem

pytestmark = pytest.mark.integration
A = "/api/v1/llm/lora/adapters"
D = "/api/v1/llm/datasets"
NDJSON = {"content-type": "application/x-ndjson"}


def _jsonl(n=3):
    return "\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(n))


@pytest.fixture
def model_and_data(api, seed_model):
    seed_model()
    r = api("POST", D, params={"dataset_id": "docs_v1"}, content=_jsonl(), headers=NDJSON)
    assert r.status_code == 201, r.text


SEED = {
    "adapter_id": "themis_help_lora",
    "base_model": "gemma-3-270m",
    "task": "documentation_qa",
    "rank": 8,
    "alpha": 16,
    "training_data": {"dataset_id": "docs_v1", "samples": 10000},
    "description": "Documentation Q&A adapter",
}


def test_seed_create_then_get_list_job(api, ctx, model_and_data, tenant):
    r = api("POST", A, json=SEED, scopes=("lora:write",))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["adapter_id"] == "themis_help_lora" and body["version"] == "v1.0"
    assert body["status"] == "training" and body["job_id"].startswith("job_")
    msgs = [m for _, m in ctx.queue.receive(10, 0)]
    assert {
        "job_id": body["job_id"],
        "tenant": tenant,
        "adapter_id": "themis_help_lora",
        "version": "v1.0",
    } in msgs

    got = api("GET", f"{A}/themis_help_lora", scopes=("lora:read",)).json()
    assert got["status"] == "training" and got["version"] == "v1.0" and got["metrics"] == {}
    assert got["serving_version"] is None and got["task"] == "documentation_qa"
    assert got["training"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert got["versions"][0]["status"] == "training"

    lst = api("GET", A, params={"base_model": "gemma-3-270m", "status": "training"}).json()
    assert lst["total"] == 1 and lst["adapters"][0] == {
        "adapter_id": "themis_help_lora",
        "base_model": "gemma-3-270m",
        "status": "training",
        "version": "v1.0",
        "serving_version": None,
        "is_loaded": False,
    }
    assert api("GET", A, params={"status": "ready"}).json()["total"] == 0

    job = api("GET", f"/api/v1/llm/lora/jobs/{body['job_id']}").json()
    assert job["state"] == "queued" and job["progress"] == 0.0


def test_ready_adapter_seed_get_shape_and_is_loaded(api, ctx, ready_adapter, tenant, worker_server):
    ready_adapter(tenant)
    got = api("GET", f"{A}/themis_help_lora").json()
    assert got["status"] == "ready" and got["serving_version"] == "v1.0"
    assert got["metrics"] == {"training_loss": 0.15, "validation_accuracy": 0.92}
    assert api("POST", f"{A}/themis_help_lora/load").status_code == 200
    lst = api("GET", A).json()
    assert lst["adapters"][0]["is_loaded"] is True


@pytest.mark.parametrize(
    "patch, status, error",
    [
        ({"base_model": "nope"}, 404, "Model not found"),
        ({"training_data": {"dataset_id": "nope"}}, 404, "Dataset not found"),
        ({"rank": 0}, 400, "Validation failed"),
        ({"rank": 257}, 400, "Validation failed"),
        ({"alpha": 2000}, 400, "Validation failed"),
        ({"training": {"target_modules": ["lm_head"]}}, 400, "Validation failed"),
        ({"training": {"epochs": 0}}, 400, "Validation failed"),
        ({"training_data": {"dataset_id": "docs_v1", "samples": 0}}, 400, "Validation failed"),
        ({"adapter_id": "bad/id"}, 400, "Validation failed"),
        ({"unknown_field": 1}, 400, "Validation failed"),
    ],
)
def test_create_validation(api, model_and_data, patch, status, error):
    err = _problem(api("POST", A, json={**SEED, **patch}), status, error)
    if status == 400:
        assert err["errors"] and all({"field", "reason"} <= set(e) for e in err["errors"])


def test_lm_head_reason_is_reported(api, model_and_data):
    err = _problem(api("POST", A, json={**SEED, "training": {"target_modules": ["lm_head"]}}), 400)
    assert err["errors"][0]["field"] == "training.target_modules"
    assert "lm_head is not allowed" in err["errors"][0]["reason"]


def test_untrainable_architecture_is_400(api, seed_model, model_and_data):
    seed_model("bert-base", architecture="bert")
    _problem(
        api("POST", A, json={**SEED, "base_model": "bert-base"}), 400, "Architecture not trainable"
    )


def test_duplicate_create_is_409(api, model_and_data):
    assert api("POST", A, json=SEED).status_code == 201
    _problem(api("POST", A, json=SEED), 409, "Adapter already exists")


def test_concurrent_creates_exactly_one_wins(api, ctx, model_and_data):
    results: list[int] = []

    def go():
        results.append(api("POST", A, json=SEED).status_code)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] + [409] * 5


def test_queue_send_failure_rolls_back_everything(api, ctx, make_ctx, seed_model, tenant):
    """Regression: a failed SQS send must leave no adapter, version or job behind."""
    from lora_common.services import datasets

    seed_model()
    datasets.create_from_jsonl(ctx, tenant, "docs_v1", None, _jsonl().encode())
    # Same table and bucket; the queue URL points at a queue that does not exist.
    broken = make_ctx(queue_url=ctx.settings.queue_url + "-does-not-exist")
    _problem(api("POST", A, json=SEED), 503, "Training queue unavailable")
    assert broken.repo.get_adapter(tenant, "themis_help_lora") is None
    assert broken.repo.list_versions(tenant, "themis_help_lora") == []
    scan = broken.repo.client.scan(TableName=broken.settings.table_name)["Items"]
    assert not [i for i in scan if i["pk"]["S"].startswith(("JOB#", f"T#{tenant}#ADAPTER"))]


def test_update_adds_version_and_conflicts(api, ctx, ready_adapter, tenant, flip):
    body = {"additional_training_data": {"dataset_id": "docs_v1", "samples": 500}}
    _problem(api("PUT", f"{A}/missing", json=body), 404, "Adapter not found")
    ready_adapter(tenant)
    r = api("PUT", f"{A}/themis_help_lora", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == "v1.1" and out["status"] == "training"
    _problem(api("PUT", f"{A}/themis_help_lora", json=body), 409, "Adapter is training")
    # v1.0 keeps serving while v1.1 trains
    assert api("GET", f"{A}/themis_help_lora").json()["serving_version"] == "v1.0"
    flip(ctx, out["job_id"])
    got = api("GET", f"{A}/themis_help_lora").json()
    assert [v["status"] for v in got["versions"]] == ["stored", "ready"]
    _problem(
        api(
            "PUT",
            f"{A}/themis_help_lora",
            json={"additional_training_data": {"dataset_id": "nope"}},
        ),
        404,
    )


def test_update_without_ready_version_is_409(api, model_and_data):
    api("POST", A, json=SEED)
    body = {"additional_training_data": {"dataset_id": "docs_v1"}}
    _problem(api("PUT", f"{A}/themis_help_lora", json=body), 409, "Adapter is training")


def test_delete_one_version_moves_serving_and_delete_all(api, ctx, ready_adapter, tenant, flip):
    ready_adapter(tenant)
    out = api(
        "PUT", f"{A}/themis_help_lora", json={"additional_training_data": {"dataset_id": "docs_v1"}}
    ).json()
    _problem(
        api("DELETE", f"{A}/themis_help_lora", params={"version": "v1.1"}),
        409,
        "Version is training",
    )
    flip(ctx, out["job_id"])
    prefix = f"adapters/{tenant}/themis_help_lora/"
    assert len(ctx.blobs.list_keys(prefix)) == 4
    assert api("DELETE", f"{A}/themis_help_lora", params={"version": "v1.1"}).status_code == 204
    got = api("GET", f"{A}/themis_help_lora").json()
    assert got["serving_version"] == "v1.0" and got["status"] == "ready"
    assert [v["version"] for v in got["versions"]] == ["v1.0"]
    assert all("/v1.0/" in k for k in ctx.blobs.list_keys(prefix))
    _problem(api("DELETE", f"{A}/themis_help_lora", params={"version": "v1.7"}), 404)
    assert api("DELETE", f"{A}/themis_help_lora").status_code == 204
    assert ctx.blobs.list_keys(prefix) == []
    _problem(api("GET", f"{A}/themis_help_lora"), 404, "Adapter not found")


def test_tenant_isolation_is_indistinguishable_from_missing(api, ready_adapter, tenant):
    out = ready_adapter(tenant)
    other = "t-other-tenant"
    for method, path in [
        ("GET", f"{A}/themis_help_lora"),
        ("DELETE", f"{A}/themis_help_lora"),
        ("GET", f"{A}/themis_help_lora/status"),
        ("POST", f"{A}/themis_help_lora/load"),
        ("GET", f"/api/v1/llm/lora/jobs/{out['job_id']}"),
        ("GET", f"{D}/docs_v1"),
        ("DELETE", f"{D}/docs_v1"),
    ]:
        r = api(method, path, tenant_id=other)
        mine = api(
            method,
            path.replace("themis_help_lora", "nope")
            .replace(out["job_id"], "job_nope")
            .replace("docs_v1", "nope"),
            tenant_id=other,
        )
        assert r.status_code == 404 == mine.status_code, (method, path)
        assert r.json()["error"] == mine.json()["error"]
    assert api("GET", A, tenant_id=other).json()["total"] == 0
    assert api("GET", D, tenant_id=other).json()["total"] == 0
    assert api("GET", A).json()["total"] == 1
    # Creating with another tenant's dataset is a 404 too.
    _problem(
        api("POST", A, json={**SEED, "adapter_id": "x"}, tenant_id=other), 404, "Dataset not found"
    )


# --- datasets -------------------------------------------------------------------------------


def test_dataset_jsonl_upload_get_list_delete(api, ctx, tenant):
    body = _jsonl(2) + "\n" + json.dumps({"instruction": "i", "input": "x", "output": "o"})
    r = api(
        "POST",
        D,
        params={"dataset_id": "ds1", "description": "demo"},
        content=body,
        headers={"content-type": "application/jsonl"},
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["dataset_id"] == "ds1" and out["records"] == 3
    assert out["format"] == "prompt_completion" and len(out["sha256"]) == 64
    stored = ctx.blobs.get_bytes(f"datasets/{tenant}/ds1/data.jsonl")
    assert len(stored) == out["size_bytes"]
    assert json.loads(stored.splitlines()[2]) == {"prompt": "i\n\nx", "completion": "o"}
    assert api("GET", f"{D}/ds1").json()["description"] == "demo"
    assert api("GET", D).json()["total"] == 1
    _problem(api("POST", D, params={"dataset_id": "ds1"}, content=body, headers=NDJSON), 409)
    assert api("DELETE", f"{D}/ds1").status_code == 204
    _problem(api("GET", f"{D}/ds1"), 404, "Dataset not found")
    assert ctx.blobs.list_keys(f"datasets/{tenant}/") == []


def test_dataset_json_records_and_chat(api):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    r = api("POST", D, json={"dataset_id": "c1", "records": [chat, chat]})
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "chat" and r.json()["records"] == 2


def test_dataset_bad_lines_reported_by_number_and_nothing_stored(api, ctx, tenant):
    lines = [
        json.dumps({"prompt": "p", "completion": "c"}),
        "{oops",
        json.dumps({"prompt": "p"}),
        json.dumps({"prompt": "p", "completion": "c"}),
        json.dumps({"foo": 1}),
    ]
    err = _problem(
        api("POST", D, params={"dataset_id": "bad"}, content="\n".join(lines), headers=NDJSON),
        400,
        "Invalid dataset",
    )
    assert [e["line"] for e in err["errors"]] == [2, 3, 5]
    assert ctx.blobs.list_keys(f"datasets/{tenant}/") == []
    assert api("GET", f"{D}/bad").status_code == 404


def test_dataset_errors_capped_at_50(api):
    body = "\n".join(["{bad"] * 80)
    err = _problem(api("POST", D, params={"dataset_id": "many"}, content=body, headers=NDJSON), 400)
    assert len(err["errors"]) == 50 and "80 invalid line(s)" in err["details"]


def test_dataset_media_type_size_and_id(api, ctx, make_ctx):
    _problem(
        api(
            "POST",
            D,
            params={"dataset_id": "x"},
            content=b"<a/>",
            headers={"content-type": "application/xml"},
        ),
        415,
    )
    _problem(api("POST", D, content=_jsonl(), headers=NDJSON), 400, "Validation failed")
    _problem(api("POST", D, params={"dataset_id": "a#b"}, content=_jsonl(), headers=NDJSON), 400)
    big = b'{"prompt": "p", "completion": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    _problem(api("POST", D, params={"dataset_id": "big"}, content=big, headers=NDJSON), 413)
