"""Resources from template.yaml on moto, and the repository methods the worker calls."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from lora_common.errors import Conflict

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_given_template_when_creating_twice_then_same_resources_with_template_properties(
    aws_endpoint, boto_session
):
    from devstack.resources import create_resources, load_template

    first = create_resources(REPO / "template.yaml", aws_endpoint, name_prefix="res-check")
    again = create_resources(REPO / "template.yaml", boto_session, name_prefix="res-check")
    assert first == again
    props = load_template(REPO / "template.yaml")["Resources"]
    assert props["TrainingQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["TrainingDeadLetterQueue", "Arn"]
    }
    ddb = boto_session.client("dynamodb")
    table = ddb.describe_table(TableName=first["table_name"])["Table"]
    assert {k["AttributeName"] for k in table["KeySchema"]} == {"pk", "sk"}
    assert {g["IndexName"] for g in table["GlobalSecondaryIndexes"]} == {"gsi1", "gsi2"}
    ttl = ddb.describe_time_to_live(TableName=first["table_name"])["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at"
    s3 = boto_session.client("s3")
    assert s3.get_bucket_versioning(Bucket=first["bucket_name"])["Status"] == "Enabled"
    sqs = boto_session.client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=first["queue_url"], AttributeNames=["All"])[
        "Attributes"
    ]
    assert attrs["VisibilityTimeout"] == "180"
    redrive = json.loads(attrs["RedrivePolicy"])
    dlq_arn = sqs.get_queue_attributes(QueueUrl=first["dlq_url"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    assert redrive == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}


def _create(ctx, seed_model, seed_dataset, tenant, adapter_id="a1"):
    from lora_common.services import adapters
    from lora_common.validation import CreateAdapterRequest

    if ctx.repo.get_model("gemma-3-270m") is None:
        seed_model()
    if ctx.repo.get_dataset(tenant, "docs_v1") is None:
        seed_dataset(tenant)
    return adapters.create_adapter(
        ctx,
        tenant,
        CreateAdapterRequest(
            adapter_id=adapter_id,
            base_model="gemma-3-270m",
            training_data={"dataset_id": "docs_v1"},
        ),
    )


def test_given_queued_job_when_claimed_twice_then_second_claim_is_none(
    ctx, seed_model, seed_dataset, tenant
):
    out = _create(ctx, seed_model, seed_dataset, tenant)
    msgs = ctx.queue.receive(max_messages=10, wait_seconds=0)
    assert [b for _, b in msgs if b["job_id"] == out["job_id"]] == [
        {"job_id": out["job_id"], "tenant": tenant, "adapter_id": "a1", "version": "v1.0"}
    ]
    for handle, _ in msgs:
        ctx.queue.delete(handle)
    job = ctx.repo.claim_job(out["job_id"], time.time())
    assert job["state"] == "running" and job["training"]["epochs"] == 3
    assert ctx.repo.claim_job(out["job_id"], time.time()) is None
    assert ctx.repo.claim_job("job_missing", time.time()) is None
    ctx.repo.record_job_progress(out["job_id"], 5, 10, 1.25, time.time())
    got = ctx.repo.get_job(out["job_id"])
    assert (got["step"], got["total_steps"], got["loss"]) == (5, 10, 1.25)


def test_ready_flip_then_second_version_stores_the_first(
    ctx, seed_model, seed_dataset, tenant, flip
):
    from lora_common.services import adapters
    from lora_common.validation import UpdateAdapterRequest

    out = _create(ctx, seed_model, seed_dataset, tenant)
    flip(ctx, out["job_id"])
    a = ctx.repo.get_adapter(tenant, "a1")
    assert (a["status"], a["serving_version"]) == ("ready", "v1.0")
    up = adapters.update_adapter(
        ctx,
        tenant,
        "a1",
        UpdateAdapterRequest(additional_training_data={"dataset_id": "docs_v1", "samples": 2}),
    )
    assert up["version"] == "v1.1"
    job = ctx.repo.get_job(up["job_id"])
    assert job["parent_version"] == "v1.0"
    flip(ctx, up["job_id"])
    a = ctx.repo.get_adapter(tenant, "a1")
    assert (a["status"], a["serving_version"], a["latest_version"]) == ("ready", "v1.1", "v1.1")
    assert ctx.repo.get_version(tenant, "a1", "v1.0")["status"] == "stored"
    # A second flip of the same job is refused by its conditions.
    with pytest.raises(Conflict):
        ctx.repo.mark_version_ready(job | {"state": "running"}, {}, {}, time.time())


def test_failed_version_keeps_serving_version(ctx, seed_model, seed_dataset, tenant, flip):
    from lora_common.services import adapters
    from lora_common.validation import UpdateAdapterRequest

    out = _create(ctx, seed_model, seed_dataset, tenant)
    flip(ctx, out["job_id"])
    up = adapters.update_adapter(
        ctx, tenant, "a1", UpdateAdapterRequest(additional_training_data={"dataset_id": "docs_v1"})
    )
    job = ctx.repo.claim_job(up["job_id"], time.time())
    ctx.repo.mark_version_failed(job, "CUDA out of memory", time.time())
    a = ctx.repo.get_adapter(tenant, "a1")
    assert (a["status"], a["serving_version"]) == ("failed", "v1.0")
    v = ctx.repo.get_version(tenant, "a1", "v1.1")
    assert (v["status"], v["error"]) == ("failed", "CUDA out of memory")
    assert ctx.repo.get_job(up["job_id"])["state"] == "failed"
    # After a failure a new version may train again, from v1.0.
    again = adapters.update_adapter(
        ctx, tenant, "a1", UpdateAdapterRequest(additional_training_data={"dataset_id": "docs_v1"})
    )
    assert again["version"] == "v1.2"
    assert ctx.repo.get_job(again["job_id"])["parent_version"] == "v1.0"


def test_rate_counter_is_atomic_across_threads(ctx):
    from lora_common import keys

    key = keys.rate("digest-atomic", 1)
    threads = [threading.Thread(target=ctx.repo.increment_rate, args=(key, 99)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ctx.repo.increment_rate(key, 99) == 21


def test_model_file_status_update(ctx, seed_model):
    seed_model()
    ctx.repo.set_model_file_status("gemma-3-270m", "invalid", {"error": "bad"})
    assert ctx.repo.get_model("gemma-3-270m")["file_status"] == "invalid"


def test_blob_store_roundtrip_ranges_and_prefix_delete(ctx):
    b = ctx.blobs
    b.put_bytes("adapters/t/x/v1.0/a.bin", b"0123456789")
    b.put_bytes("adapters/t/x/v1.0/b.bin", b"abc")
    b.put_bytes("adapters/t/y/v1.0/c.bin", b"keep")
    assert b.read_range("adapters/t/x/v1.0/a.bin", 2, 3) == b"234"
    assert b.head("adapters/t/x/v1.0/a.bin")["size"] == 10
    assert b.head("adapters/t/missing") is None
    assert b.delete_prefix("adapters/t/x/") >= 2
    assert b.list_keys("adapters/t/") == ["adapters/t/y/v1.0/c.bin"]
    assert b.get_bytes("adapters/t/y/v1.0/c.bin") == b"keep"


def test_record_batch_submission(ctx, seed_model, seed_dataset, tenant):
    from lora_common.errors import NotFound

    out = _create(ctx, seed_model, seed_dataset, tenant)
    ctx.repo.record_batch_submission(out["job_id"], "batch-123", "2026-12-03T17:00:00Z")
    job = ctx.repo.get_job(out["job_id"])
    assert (job["batch_job_id"], job["submitted_at"]) == ("batch-123", "2026-12-03T17:00:00Z")
    assert job["state"] == "queued"
    with pytest.raises(NotFound):
        ctx.repo.record_batch_submission("job_gone", "batch-1", time.time())
