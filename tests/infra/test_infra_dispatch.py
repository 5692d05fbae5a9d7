"""The training dispatch function fed real SQS event JSON: jobs reach AWS Batch (moto's Batch
without Docker), the Batch job id is recorded on the job, and only the records that failed come
back in batchItemFailures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from infra_helpers import REGION, create_storage, load_event

pytestmark = pytest.mark.infra

GOOD = {"4f1c2a5e-0b8d-4d3a-9a67-1f0e2d3c4b5a": "job_dispatch_one",
        "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d": "job_dispatch_two"}
MALFORMED = ["8e2d3c4b-5a6f-4e7d-8c9b-0a1b2c3d4e5f",   # body is not JSON
             "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f"]   # JSON without job_id
GONE = "d4e5f6a7-b8c9-4d0e-9f1a-2b3c4d5e6f70"          # job deleted before dispatch


@pytest.fixture
def aws(aws_endpoint: str, worker_template) -> Iterator[dict[str, Any]]:
    """The session's moto server (Batch backend without Docker) with a table from
    template.yaml and a Batch queue + job definition whose command is read from
    infra/worker.yaml. Names are unique per test: the server is shared by the whole suite
    (an in-process mock_aws here would reset the server's state for every other test)."""
    import urllib.request
    import uuid

    import boto3

    config = urllib.request.Request(
        f"{aws_endpoint}/moto-api/config", method="POST",
        data=json.dumps({"batch": {"use_docker": False}}).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(config, timeout=10).close()
    tag = uuid.uuid4().hex[:8]
    clients = {s: boto3.client(s, region_name=REGION) for s in
               ("dynamodb", "s3", "sqs", "batch", "iam")}
    names = create_storage(boto3.session.Session(region_name=REGION), f"dispatch-{tag}")
    role = clients["iam"].create_role(
        RoleName=f"batch-service-{tag}", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action":
            "sts:AssumeRole", "Principal": {"Service": "batch.amazonaws.com"}}]}),
    )["Role"]["Arn"]
    batch = clients["batch"]
    ce = batch.create_compute_environment(computeEnvironmentName=f"training-{tag}",
                                          type="UNMANAGED", state="ENABLED", serviceRole=role)
    queue = batch.create_job_queue(
        jobQueueName=f"training-{tag}", state="ENABLED", priority=1,
        computeEnvironmentOrder=[{"order": 1,
                                  "computeEnvironment": ce["computeEnvironmentArn"]}],
    )["jobQueueArn"]
    jd = worker_template["Resources"]["TrainingJobDefinition"]["Properties"]
    definition = batch.register_job_definition(
        jobDefinitionName=f"training-{tag}", type="container", parameters=jd["Parameters"],
        containerProperties={
            "image": "lora-worker:test",
            "command": jd["ContainerProperties"]["Command"],
            "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                     {"type": "MEMORY", "value": "512"}],
        },
    )["jobDefinitionArn"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_TABLE_NAME", names["table"])
        mp.setenv("LORA_BATCH_JOB_QUEUE", queue)
        mp.setenv("LORA_BATCH_JOB_DEFINITION", definition)
        import dispatch_fn

        dispatch_fn.set_dispatcher(None)
        try:
            yield {**clients, **names, "queue": queue, "definition": definition}
        finally:
            dispatch_fn.set_dispatcher(None)


def put_job(aws: dict[str, Any], job_id: str, state: str = "queued", **extra: Any) -> None:
    from lora_common import keys

    item = {**keys.job(job_id), "job_id": job_id, "tenant": "acme", "adapter_id": "a",
            "version": "v1.0", "state": state, "created_at": "2026-12-03T16:30:00Z", **extra}
    aws["dynamodb"].put_item(TableName=aws["table"],
                             Item={k: {"S": v} for k, v in item.items()})


def get_job(aws: dict[str, Any], job_id: str) -> dict[str, Any]:
    from lora_common.repository import DynamoRepository

    return DynamoRepository(aws["table"], aws["dynamodb"]).get_job(job_id)


def batch_jobs(aws: dict[str, Any]) -> list[dict[str, Any]]:
    batch = aws["batch"]
    ids = [j["jobId"] for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING",
                                     "SUCCEEDED", "FAILED")
           for j in batch.list_jobs(jobQueue=aws["queue"], jobStatus=status)["jobSummaryList"]]
    return batch.describe_jobs(jobs=ids)["jobs"] if ids else []


def require_repository_method() -> None:
    from lora_common.repository import DynamoRepository

    assert hasattr(DynamoRepository, "record_batch_submission"), (
        "DynamoRepository.record_batch_submission(job_id, batch_job_id, now) is missing "
        "(the dispatch function records the Batch job id through it)")


def test_partial_batch_failure_reports_only_bad_records(aws) -> None:
    # Given two queued jobs, two malformed messages and a job deleted before dispatch
    require_repository_method()
    import dispatch_fn

    for job_id in GOOD.values():
        put_job(aws, job_id)
    event = load_event("sqs_training_jobs.json")

    # When the dispatch function gets the batch
    result = dispatch_fn.handler(event, None)

    # Then only the malformed records are failures (retried, then dead-lettered) ...
    assert sorted(f["itemIdentifier"] for f in result["batchItemFailures"]) == sorted(MALFORMED)
    # ... each queued job became one Batch job named after it, with its id as the parameter
    jobs = batch_jobs(aws)
    assert sorted(j["parameters"]["job_id"] for j in jobs) == sorted(GOOD.values())
    from lora_common.batch import job_name_for

    for job in jobs:
        assert job["jobName"] == job_name_for(job["parameters"]["job_id"])
        assert job["jobQueue"] == aws["queue"]
        assert job["jobDefinition"] == aws["definition"]
    # ... and the Batch job id is recorded on each job item
    by_job = {j["parameters"]["job_id"]: j["jobId"] for j in jobs}
    for job_id in GOOD.values():
        assert get_job(aws, job_id)["batch_job_id"] == by_job[job_id]


def test_redelivery_does_not_submit_twice(aws) -> None:
    # Given a job already dispatched once
    require_repository_method()
    import dispatch_fn

    put_job(aws, "job_dispatch_one")
    first = dispatch_fn.handler(load_event("sqs_training_job_redelivered.json"), None)
    assert first == {"batchItemFailures": []}
    # When SQS delivers the same message again, Then it is acknowledged without a new job
    again = dispatch_fn.handler(load_event("sqs_training_job_redelivered.json"), None)
    assert again == {"batchItemFailures": []}
    assert len(batch_jobs(aws)) == 1


def test_job_no_longer_queued_is_acknowledged_without_submitting(aws) -> None:
    import dispatch_fn

    put_job(aws, "job_dispatch_one", state="running")
    result = dispatch_fn.handler(load_event("sqs_training_job_redelivered.json"), None)
    assert result == {"batchItemFailures": []}
    assert batch_jobs(aws) == []


def test_batch_error_fails_each_record_without_raising(aws, monkeypatch) -> None:
    # Given a job queue Batch does not know, When the batch arrives, Then every submittable
    # record is reported failed (to be retried) and nothing is recorded on the jobs.
    import dispatch_fn

    for job_id in GOOD.values():
        put_job(aws, job_id)
    monkeypatch.setenv("LORA_BATCH_JOB_QUEUE",
                       "arn:aws:batch:us-east-1:123456789012:job-queue/nope")
    dispatch_fn.set_dispatcher(None)
    result = dispatch_fn.handler(load_event("sqs_training_jobs.json"), None)
    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    assert failed == set(GOOD) | set(MALFORMED)
    for job_id in GOOD.values():
        assert "batch_job_id" not in get_job(aws, job_id)


@pytest.mark.parametrize("body", [
    "", "null", "[]", '"job"', "{}", '{"job_id": "j"}',
    '{"job_id": "", "tenant": "t", "adapter_id": "a", "version": "v1.0"}',
    '{"job_id": 7, "tenant": "t", "adapter_id": "a", "version": "v1.0"}',
])
def test_parse_job_message_refuses_non_job_bodies(body: str) -> None:
    import dispatch_fn

    with pytest.raises(dispatch_fn.BadMessage):
        dispatch_fn.parse_job_message(body)


def test_job_names_are_valid_batch_names() -> None:
    import re

    from lora_common.batch import job_name_for

    for job_id in ("job_0123abcd", "job.with.dots", "x" * 300, "j#1/2 3"):
        name = job_name_for(job_id)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", name), name
