"""Training datasets: validated, normalized JSONL stored per tenant."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lora_common import keys
from lora_common.context import Context
from lora_common.errors import BadRequest, Conflict, NotFound, ValidationFailed
from lora_common.services import paginate
from lora_common.util import is_valid_id, iso
from lora_common.validation import MAX_DATASET_ERRORS, parse_jsonl, validate_records


def _check_id(dataset_id: str | None) -> str:
    if not dataset_id:
        raise ValidationFailed(
            "Validation failed",
            "dataset_id: required",
            errors=[{"field": "dataset_id", "reason": "required"}],
        )
    if not is_valid_id(dataset_id):
        reason = "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
        raise ValidationFailed(
            "Validation failed",
            f"dataset_id: {reason}",
            errors=[{"field": "dataset_id", "reason": reason}],
        )
    return dataset_id


def _raise_bad_lines(errors: list[dict[str, Any]]) -> None:
    shown = errors[:MAX_DATASET_ERRORS]
    summary = "; ".join(f"line {e['line']}: {e['reason']}" for e in shown[:5])
    if len(errors) > 5:
        summary += f" (and {len(errors) - 5} more)"
    raise ValidationFailed(
        "Invalid dataset",
        f"{len(errors)} invalid line(s): {summary}",
        errors=[
            {"field": f"line {e['line']}", "line": e["line"], "reason": e["reason"]} for e in shown
        ],
    )


def create_from_jsonl(
    ctx: Context, tenant: str, dataset_id: str | None, description: str | None, body: bytes
) -> dict[str, Any]:
    records, fmt, errors = parse_jsonl(body)
    return _store(ctx, tenant, _check_id(dataset_id), description, records, fmt, errors)


def create_from_records(
    ctx: Context, tenant: str, dataset_id: str, description: str | None, records: list[Any]
) -> dict[str, Any]:
    normalized, fmt, errors = validate_records(list(enumerate(records, start=1)))
    return _store(ctx, tenant, _check_id(dataset_id), description, normalized, fmt, errors)


def _store(
    ctx: Context,
    tenant: str,
    dataset_id: str,
    description: str | None,
    records: list[dict[str, Any]],
    fmt: str,
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    if errors:
        _raise_bad_lines(errors)
    if not records:
        raise BadRequest("Invalid dataset", "The dataset has no records")
    if description is not None and len(description) > 2000:
        raise BadRequest("Invalid dataset", "description is longer than 2000 characters")
    if ctx.repo.get_dataset(tenant, dataset_id) is not None:
        raise Conflict("Dataset already exists", f"dataset_id {dataset_id} already exists")
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    item = {
        "dataset_id": dataset_id,
        "tenant": tenant,
        "description": description,
        "records": len(records),
        "format": fmt,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "s3_key": keys.dataset_object(tenant, dataset_id),
        "created_at": iso(ctx.clock()),
    }
    # The conditional item write comes first so that a concurrent upload of the same id
    # loses before it can overwrite the winner's object; a failed object write undoes it.
    ctx.repo.put_dataset(item)
    try:
        ctx.blobs.put_bytes(item["s3_key"], data, "application/x-ndjson")
    except Exception:
        ctx.repo.delete_dataset(tenant, dataset_id)
        raise
    return item


def get_dataset(ctx: Context, tenant: str, dataset_id: str) -> dict[str, Any]:
    item = ctx.repo.get_dataset(tenant, dataset_id)
    if item is None:
        raise NotFound("Dataset not found", f"Unknown dataset_id: {dataset_id}")
    return item


def list_datasets(
    ctx: Context, tenant: str, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    items = sorted(ctx.repo.list_datasets(tenant), key=lambda d: d["dataset_id"])
    return paginate(items, limit, offset)


def delete_dataset(ctx: Context, tenant: str, dataset_id: str) -> None:
    get_dataset(ctx, tenant, dataset_id)
    ctx.repo.delete_dataset(tenant, dataset_id)
    ctx.blobs.delete_prefix(keys.dataset_prefix(tenant, dataset_id))
