"""Base model registry. Models are shared by every tenant."""

from __future__ import annotations

import logging
from typing import Any

from lora_common import keys
from lora_common.blobs import parse_s3_uri
from lora_common.context import Context, get_context
from lora_common.errors import BadRequest, Conflict, NotFound
from lora_common.gguf_header import GGUFFormatError, ModelFileInfo, file_reader, read_header
from lora_common.services import paginate
from lora_common.util import iso
from lora_common.validation import RegisterModelRequest

log = logging.getLogger("lora.models")

VERIFIED, INVALID, UNVERIFIED = "verified", "invalid", "unverified"
# Declared parameter counts are often rounded ("7B" for 6.74e9); larger gaps contradict.
PARAMETER_TOLERANCE = 0.10


class _Unreadable(Exception):
    """The file cannot be reached (yet): not an error of the file itself."""


def _reader_for(ctx: Context, path: str):
    if path.startswith("s3://"):
        try:
            bucket, key = parse_s3_uri(path)
        except ValueError as exc:
            raise BadRequest("Invalid gguf_path", str(exc)) from None
        head = ctx.blobs.head(key, bucket=bucket)
        if head is None:
            raise _Unreadable(f"s3 object {path} does not exist (yet)")
        size = head["size"]

        def read(offset: int, n: int) -> bytes:
            if offset >= size:
                return b""
            return ctx.blobs.read_range(key, offset, min(n, size - offset), bucket=bucket)

        return read, size
    if ctx.settings.mode != "local":
        # A Lambda function has no model files on its disk; only s3:// paths are read.
        raise _Unreadable("local paths are only read in local mode")
    import os

    if not os.path.isfile(path):
        raise _Unreadable(f"{path} is not a readable file")
    return file_reader(path), os.path.getsize(path)


def inspect_model_file(ctx: Context, path: str) -> ModelFileInfo | None:
    """Header of the file at ``path``; None when unreadable; GGUFFormatError when not GGUF."""
    try:
        read, size = _reader_for(ctx, path)
    except _Unreadable as exc:
        log.info("model file not readable: %s", exc)
        return None
    except OSError:
        return None
    info = read_header(read)
    if info.header_size > size:
        raise GGUFFormatError("header extends past end of file")
    return info


def contradictions(declared: dict[str, Any], info: ModelFileInfo) -> list[dict[str, str]]:
    """Declared values that the file contradicts, as {field, reason}."""
    out = []
    arch = declared.get("architecture")
    if arch and info.architecture and arch.lower() != info.architecture.lower():
        out.append(
            {
                "field": "architecture",
                "reason": f"file says {info.architecture!r}, declared {arch!r}",
            }
        )
    pc = declared.get("parameter_count")
    actual = info.parameter_count
    if pc and actual and abs(pc - actual) > PARAMETER_TOLERANCE * actual:
        out.append(
            {
                "field": "parameter_count",
                "reason": f"file has {actual} parameters, declared {pc}",
            }
        )
    q = declared.get("quantization")
    if q and info.quantization and q.upper() != info.quantization.upper():
        out.append(
            {"field": "quantization", "reason": f"file is {info.quantization}, declared {q}"}
        )
    meta = declared.get("metadata") or {}
    for name, actual in (("context_length", info.context_length), ("vocab_size", info.vocab_size)):
        want = meta.get(name)
        if want is not None and actual is not None and int(want) != int(actual):
            out.append(
                {"field": f"metadata.{name}", "reason": f"file says {actual}, declared {want}"}
            )
    return out


def file_info(info: ModelFileInfo) -> dict[str, Any]:
    d = info.to_dict()
    return {
        k: d[k]
        for k in (
            "gguf_version", "name", "file_type", "quantization", "parameter_count",
            "context_length", "vocab_size", "tensor_count", "header_size", "architecture",
        )
    }  # fmt: skip


def register_model(ctx: Context, req: RegisterModelRequest) -> dict[str, Any]:
    """Register a base model. When ``gguf_path`` is readable its header is read and must
    agree with the declared values (400 otherwise); unreadable paths are registered as
    declared with file_status 'unverified'."""
    if ctx.repo.get_model(req.model_id) is not None:
        raise Conflict("Model already exists", f"model_id {req.model_id} is registered")
    declared = req.model_dump()
    info = None
    if req.gguf_path:
        try:
            info = inspect_model_file(ctx, req.gguf_path)
        except GGUFFormatError as exc:
            raise BadRequest("Invalid model file", f"{req.gguf_path}: {exc}") from None
    metadata = {k: v for k, v in (declared.get("metadata") or {}).items() if v is not None}
    item: dict[str, Any] = {
        "model_id": req.model_id,
        "architecture": req.architecture.lower(),
        "parameter_count": req.parameter_count,
        "quantization": req.quantization,
        "gguf_path": req.gguf_path,
        "description": req.description,
        "metadata": metadata,
        "file_status": UNVERIFIED,
        "file_info": {},
        "created_at": iso(ctx.clock()),
    }
    if info is not None:
        bad = contradictions(declared, info)
        if bad:
            raise BadRequest(
                "Model file mismatch",
                "; ".join(f"{b['field']}: {b['reason']}" for b in bad),
                errors=bad,
            )
        item["file_status"] = VERIFIED
        item["file_info"] = file_info(info)
        item["parameter_count"] = req.parameter_count or info.parameter_count
        item["quantization"] = req.quantization or info.quantization
        if info.architecture:
            item["architecture"] = info.architecture
        for name in ("context_length", "vocab_size"):
            if getattr(info, name) is not None:
                metadata.setdefault(name, getattr(info, name))
    ctx.repo.put_model(item)
    return item


def verify_model_file(model_id: str, ctx: Context | None = None) -> dict[str, Any]:
    """Re-read the model's file and record file_status: 'verified' (header agrees with the
    registration), 'invalid' (not GGUF, or contradicts it) or 'unverified' (unreadable).
    The worker calls this before first use. Returns the updated model item."""
    ctx = ctx or get_context()
    model = get_model(ctx, model_id)
    status, info_dict = UNVERIFIED, {}
    if model.get("gguf_path"):
        try:
            info = inspect_model_file(ctx, model["gguf_path"])
        except GGUFFormatError as exc:
            status, info_dict = INVALID, {"error": f"not a usable GGUF file: {exc}"}
        else:
            if info is not None:
                bad = contradictions(model, info)
                if bad:
                    status = INVALID
                    info_dict = {
                        **file_info(info),
                        "error": "; ".join(f"{b['field']}: {b['reason']}" for b in bad),
                    }
                else:
                    status, info_dict = VERIFIED, file_info(info)
    ctx.repo.set_model_file_status(model_id, status, info_dict)
    return {**model, "file_status": status, "file_info": info_dict}


def get_model(ctx: Context, model_id: str) -> dict[str, Any]:
    model = ctx.repo.get_model(model_id)
    if model is None:
        raise NotFound("Model not found", f"Unknown model_id: {model_id}")
    return model


def list_models(
    ctx: Context, architecture: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    models = sorted(ctx.repo.list_models(), key=lambda m: m["model_id"])
    if architecture:
        models = [m for m in models if m.get("architecture", "").lower() == architecture.lower()]
    return paginate(models, limit, offset)


def delete_model(ctx: Context, model_id: str, cascade: bool = False) -> None:
    """Delete a model. If adapters (of any tenant) are built on it, refuse with 409 unless
    ``cascade`` is true, in which case those adapters' records and S3 files are deleted
    first. The model file itself (gguf_path) is never deleted: it belongs to the operator."""
    get_model(ctx, model_id)
    adapters = ctx.repo.adapters_of_model(model_id)
    if adapters and not cascade:
        raise Conflict(
            "Model in use",
            f"{len(adapters)} adapter(s) use model {model_id}; delete them first or pass "
            "cascade=true",
        )
    for adapter in adapters:
        ctx.repo.delete_adapter(adapter["tenant"], adapter["adapter_id"])
        ctx.blobs.delete_prefix(keys.adapter_prefix(adapter["tenant"], adapter["adapter_id"]))
    ctx.repo.delete_model(model_id)
