"""AWS Batch submitter: the only module that touches the Batch boto3 client.

The training dispatch function (functions/dispatch) turns each queued job message into one
Batch job running ``python -m gpu_worker train --job-id <job_id>``; the job definition's
command is ``["train", "--job-id", "Ref::job_id"]`` and the id travels as the ``job_id``
parameter.
"""

from __future__ import annotations

import re
from typing import Any

from lora_common.errors import ServiceUnavailable

JOB_NAME_PREFIX = "lora-train-"
# Batch job names: up to 128 letters, digits, hyphens and underscores, starting with a letter
# or digit.
_JOB_NAME_MAX = 128
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")


def job_name_for(job_id: str) -> str:
    """Batch job name for a training job: readable in the console, always a valid name."""
    return (JOB_NAME_PREFIX + _NOT_ALLOWED.sub("-", job_id))[:_JOB_NAME_MAX]


class BatchSubmitter:
    """Submits training jobs to one job queue with one job definition."""

    def __init__(self, job_queue: str, job_definition: str, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("batch")
        self.job_queue = job_queue
        self.job_definition = job_definition
        self.client = client

    def submit_training(self, job_id: str) -> str:
        """Submit the training job ``job_id``; returns the Batch job id.

        Raises ``ServiceUnavailable`` when Batch refuses or cannot be reached, so the caller
        can leave the message on the queue for a retry.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.submit_job(
                jobName=job_name_for(job_id),
                jobQueue=self.job_queue,
                jobDefinition=self.job_definition,
                parameters={"job_id": job_id},
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "") or "error"
            raise ServiceUnavailable(
                "Training scheduler unavailable", f"Batch SubmitJob failed ({code})"
            ) from exc
        except BotoCoreError as exc:
            raise ServiceUnavailable(
                "Training scheduler unavailable", "Batch SubmitJob failed"
            ) from exc
        return str(resp["jobId"])
