"""Training dispatch: SQS (TrainingQueue) -> AWS Batch.

Each record is one job message ``{"job_id", "tenant", "adapter_id", "version"}`` (see
docs/ARCHITECTURE.md). For each, the function submits one Batch job running
``python -m gpu_worker train --job-id <job_id>`` and records the Batch job id on the job item.

The event source mapping uses ReportBatchItemFailures: a record that cannot be dispatched
(malformed body, Batch or DynamoDB unavailable) is returned in ``batchItemFailures`` and comes
back after the visibility timeout (to the dead-letter queue after maxReceiveCount); the other
records of the batch are deleted. One bad record never fails the whole invocation.

Redelivery is safe: a job that is gone, no longer ``queued`` or already carries a
``batch_job_id`` is acknowledged without a second submission, and the worker itself claims a
job only from ``queued`` (a duplicate Batch job exits without training).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("lora.dispatch")
log.setLevel(logging.INFO)

REQUIRED_FIELDS = ("job_id", "tenant", "adapter_id", "version")


class DispatchSettings(BaseSettings):
    """What this function reads from its environment (set by template.yaml)."""

    model_config = SettingsConfigDict(env_prefix="LORA_", extra="ignore", frozen=True)

    table_name: str = Field(min_length=1, description="DynamoDB table holding the job items.")
    batch_job_queue: str = Field(min_length=1, description="Batch job queue name or ARN.")
    batch_job_definition: str = Field(
        min_length=1, description="Batch job definition (name, name:revision or ARN)."
    )


class JobStore(Protocol):
    def get_job(self, job_id: str) -> dict[str, Any] | None: ...

    def record_batch_submission(self, job_id: str, batch_job_id: str, now: str) -> None: ...


class Submitter(Protocol):
    def submit_training(self, job_id: str) -> str: ...


class BadMessage(ValueError):
    """The record's body is not a job message; retrying cannot fix it."""


def parse_job_message(body: str) -> dict[str, str]:
    try:
        message = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise BadMessage(f"body is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise BadMessage("body is not a JSON object")
    missing = [f for f in REQUIRED_FIELDS if not isinstance(message.get(f), str) or not message[f]]
    if missing:
        raise BadMessage(f"missing or empty fields: {', '.join(missing)}")
    return {f: message[f] for f in REQUIRED_FIELDS}


@dataclass
class Dispatcher:
    jobs: JobStore
    submitter: Submitter
    clock: Any  # () -> ISO-8601 UTC string

    def dispatch(self, message: dict[str, str]) -> str | None:
        """Submit one job; returns the Batch job id, or None when there is nothing to do."""
        job_id = message["job_id"]
        job = self.jobs.get_job(job_id)
        if job is None:
            log.info("job %s no longer exists (adapter deleted?); dropping message", job_id)
            return None
        if job.get("state") != "queued":
            log.info("job %s is %s, not queued; dropping message", job_id, job.get("state"))
            return None
        if job.get("batch_job_id"):
            log.info("job %s already submitted as %s", job_id, job["batch_job_id"])
            return None
        batch_job_id = self.submitter.submit_training(job_id)
        log.info("job %s submitted to Batch as %s", job_id, batch_job_id)
        self.jobs.record_batch_submission(job_id, batch_job_id, self.clock())
        return batch_job_id

    def handle(self, event: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
        failures: list[dict[str, str]] = []
        for record in event.get("Records") or []:
            message_id = record.get("messageId", "")
            try:
                self.dispatch(parse_job_message(record.get("body", "")))
            except BadMessage as exc:
                # Left to the redrive policy: after maxReceiveCount it lands in the DLQ,
                # where a person can see it (and the DLQ alarm fires).
                log.error("message %s is not a job message: %s", message_id, exc)
                failures.append({"itemIdentifier": message_id})
            except Exception:
                log.exception("message %s could not be dispatched; will be retried", message_id)
                failures.append({"itemIdentifier": message_id})
        return {"batchItemFailures": failures}


def _utc_now() -> str:
    from lora_common.util import iso, now

    return iso(now())


_dispatcher: Dispatcher | None = None


def build_dispatcher(settings: DispatchSettings | None = None) -> Dispatcher:
    """Wiring from the environment; boto3 clients honour AWS_ENDPOINT_URL on their own."""
    import boto3

    from lora_common.batch import BatchSubmitter
    from lora_common.repository import DynamoRepository

    settings = settings or DispatchSettings()
    session = boto3.session.Session()
    return Dispatcher(
        jobs=DynamoRepository(settings.table_name, session.client("dynamodb")),
        submitter=BatchSubmitter(
            settings.batch_job_queue, settings.batch_job_definition, session.client("batch")
        ),
        clock=_utc_now,
    )


def set_dispatcher(dispatcher: Dispatcher | None) -> None:
    """Install (or with None, forget) the process's dispatcher; for tests."""
    global _dispatcher
    _dispatcher = dispatcher


def handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    global _dispatcher
    if _dispatcher is None:
        _dispatcher = build_dispatcher()
    return _dispatcher.handle(event)
