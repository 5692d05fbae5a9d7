"""SQS training-job queue: send, receive, delete."""

from __future__ import annotations

import json
from typing import Any

from lora_common.errors import ServiceUnavailable


class JobQueue:
    def __init__(self, queue_url: str, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("sqs")
        self.queue_url = queue_url
        self.client = client

    def _call(self, op: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.queue_url:
            raise ServiceUnavailable("Training queue unavailable", "No queue is configured")
        try:
            return getattr(self.client, op)(QueueUrl=self.queue_url, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise ServiceUnavailable("Training queue unavailable", f"SQS {op} failed") from exc

    def ping(self) -> None:
        self._call("get_queue_attributes", AttributeNames=["QueueArn"])

    def send_job(self, message: dict[str, Any]) -> str:
        """Send one training-job message; returns the SQS message id."""
        resp = self._call("send_message", MessageBody=json.dumps(message, sort_keys=True))
        return resp["MessageId"]

    def receive(
        self, max_messages: int = 1, wait_seconds: int = 0
    ) -> list[tuple[str, dict[str, Any]]]:
        resp = self._call(
            "receive_message",
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
        )
        return [(m["ReceiptHandle"], json.loads(m["Body"])) for m in resp.get("Messages", [])]

    def delete(self, receipt_handle: str) -> None:
        self._call("delete_message", ReceiptHandle=receipt_handle)
