"""Persistence for the local stack: moto keeps everything in memory, so the local stack saves
the table's items and the bucket's objects into the data directory and restores them at the
next start. Training jobs that were queued or running when the stack stopped are queued
again on restore (SQS messages themselves are not saved).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger("devstack.snapshot")


def save(state_dir: Path, *, dynamodb, s3, table: str, bucket: str) -> tuple[int, int]:
    """Write a full snapshot next to the old one, then swap it in (never half-written)."""
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "s3").mkdir(parents=True)
    items = 0
    with (tmp / "table.jsonl").open("w") as fh:
        for page in dynamodb.get_paginator("scan").paginate(TableName=table):
            for item in page["Items"]:
                fh.write(json.dumps(item) + "\n")
                items += 1
    objects = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            target = tmp / "s3" / obj["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            objects += 1
    old = state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        state_dir.rename(old)
    tmp.rename(state_dir)
    shutil.rmtree(old, ignore_errors=True)
    return items, objects


def restore(state_dir: Path, *, dynamodb, s3, sqs, table: str, bucket: str,
            queue_url: str) -> tuple[int, int]:
    if not (state_dir / "table.jsonl").exists():
        return 0, 0
    items = 0
    requeue = []
    with (state_dir / "table.jsonl").open() as fh:
        for line in fh:
            item = json.loads(line)
            if item.get("sk", {}).get("S") == "JOB" and item.get("state", {}).get("S") in (
                "queued",
                "running",
            ):
                # A job that was running when the stack stopped lost its worker with it: the
                # local stack has exactly one trainer, so it is safe to run it again.
                item["state"] = {"S": "queued"}
                requeue.append(item)
            dynamodb.put_item(TableName=table, Item=item)
            items += 1
    objects = 0
    root = state_dir / "s3"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, path.relative_to(root).as_posix())
        objects += 1
    for job in requeue:
        message = {k: job[k]["S"] for k in ("job_id", "tenant", "adapter_id", "version")}
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(message))
    if requeue:
        log.info("re-queued %d training job(s) that had not started", len(requeue))
    return items, objects
