"""Regressions found by reviewing the first build; each test names the fault it pins."""

from __future__ import annotations

import json
import time

import pytest
from test_api_models import _problem
from test_resources_repository import _create

pytestmark = pytest.mark.integration

M = "/api/v1/llm/models"


def test_a_job_whose_worker_died_is_taken_over_after_its_lease_not_before(
    ctx, seed_model, seed_dataset, tenant
):
    # Fault: a job left `running` by a dead worker kept its version `training` forever.
    out = _create(ctx, seed_model, seed_dataset, tenant)
    now = time.time()
    assert ctx.repo.claim_job(out["job_id"], now, stale_after=900) is not None
    # A redelivery while the first worker is alive (fresh heartbeat) is still dropped.
    assert ctx.repo.claim_job(out["job_id"], now + 60, stale_after=900) is None
    ctx.repo.record_job_heartbeat(out["job_id"], now + 600)
    assert ctx.repo.claim_job(out["job_id"], now + 1200, stale_after=900) is None
    # Past the lease since the last heartbeat, the next delivery takes it over.
    taken = ctx.repo.claim_job(out["job_id"], now + 1600, stale_after=900)
    assert taken is not None and taken["state"] == "running"
    # Finished jobs are never taken over, however old.
    ctx.repo.mark_version_failed(taken, "boom", now + 1700)
    assert ctx.repo.claim_job(out["job_id"], now + 99999, stale_after=900) is None


def test_deeply_nested_json_is_a_400_not_a_500(api):
    # Fault: json.loads raised RecursionError, answered 500.
    body = ("[" * 100_000) + ("]" * 100_000)
    r = api("POST", M, content=body, headers={"Content-Type": "application/json"})
    assert _problem(r, 400, "Invalid JSON body")


@pytest.mark.parametrize(
    "field",
    [
        {"parameter_count": 10**40},
        {"metadata": {"note": 1e300}},
        {"metadata": {"huge": 10**40}},
        {"metadata": {"blob": "x" * 9000}},
    ],
)
def test_values_dynamodb_cannot_store_are_refused_with_400(api, field):
    # Fault: such values reached DynamoDB's serializer and answered 500.
    r = api("POST", M, json={"model_id": "m1", "architecture": "llama", **field})
    assert _problem(r, 400)


def test_nan_in_metadata_is_refused_with_400(api):
    raw = '{"model_id": "m1", "architecture": "llama", "metadata": {"x": NaN}}'
    r = api("POST", M, content=raw, headers={"Content-Type": "application/json"})
    assert _problem(r, 400)


def test_a_line_separator_inside_a_record_does_not_split_the_record(api):
    # Fault: str.splitlines() also splits at U+2028, so such a dataset was refused at upload
    # with wrong line numbers, or stored and then unreadable for training.
    records = [{"prompt": "a\u2028b", "completion": " c"}, {"prompt": "d", "completion": " e"}]
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode()
    r = api("POST", "/api/v1/llm/datasets?dataset_id=ls", content=body,
            headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 201, r.text
    assert r.json()["records"] == 2


def test_a_batch_retry_waits_for_the_dead_attempts_lease_then_takes_the_job_over(
    ctx, seed_model, seed_dataset, tenant, tmp_path
):
    # Fault: AWS Batch retries an attempt whose host was lost right away; the retry found the
    # job `running` (fresh heartbeat of the dead attempt), skipped it, and the version stayed
    # `training` forever.
    from gpu_worker.jobs import JOB_LEASE_S, JobFailed, JobRunner

    out = _create(ctx, seed_model, seed_dataset, tenant)
    t0 = time.time()
    assert ctx.repo.claim_job(out["job_id"], t0) is not None  # the attempt that died
    clock = [t0 + 5]

    class NoTraining(JobRunner):
        def _train_and_publish(self, job, prefix):
            raise JobFailed(f"took over at +{clock[0] - t0:.0f}s")

    runner = NoTraining(ctx.repo, ctx.blobs, work_dir=tmp_path, cache_dir=tmp_path,
                        clock=lambda: clock[0],
                        sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert runner.run(out["job_id"]).state == "skipped"  # a plain duplicate never waits
    outcome = runner.run(out["job_id"], wait_if_running=True)
    assert outcome.state == "failed" and outcome.details.startswith("took over")
    assert clock[0] - t0 > JOB_LEASE_S
    version = ctx.repo.get_version(tenant, "a1", "v1.0")
    assert version["status"] == "failed"
