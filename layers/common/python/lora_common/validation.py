"""Request schemas with their ranges/defaults, and dataset line validation.

Pure logic: pydantic models and functions over bytes. HTTP never appears here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from lora_common.util import ID_PATTERN

# Architectures whose GGUF transformers can load for training AND whose attention/MLP use the
# separate q/k/v/o and gate/up/down projections that the adapter targets name. Not here:
# gemma (v1; transformers 5 cannot load it from GGUF) and phi3 (fused qkv_proj/gate_up_proj).
TRAINABLE_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"})
ALLOWED_TARGET_MODULES = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)  # fmt: skip
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
_REFUSED_MODULES = {
    "lm_head": "the output head is not trained by a LoRA adapter here (vocabulary-sized, "
    "and the GGUF adapter export supports attention/MLP projections only)",
    "embed_tokens": "embeddings are not trained by a LoRA adapter here (vocabulary-sized, "
    "and the GGUF adapter export supports attention/MLP projections only)",
    "modules_to_save": "full-weight modules_to_save cannot be exported as a GGUF LoRA adapter",
}
MAX_DATASET_ERRORS = 50

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingSettings(_Strict):
    epochs: int = Field(3, ge=1, le=50)
    learning_rate: float = Field(2e-4, ge=1e-6, le=1e-2)
    max_seq_length: int = Field(256, ge=16, le=4096)
    batch_size: int = Field(4, ge=1, le=64)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    validation_split: float = Field(0.1, ge=0.0, le=0.5)
    seed: int = Field(42, ge=0, le=2**31 - 1)
    use_rslora: bool = False
    lora_dropout: float = Field(0.0, ge=0.0, le=0.5)

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("target_modules must not be empty")
        for name in value:
            if name in _REFUSED_MODULES:
                raise ValueError(f"{name} is not allowed: {_REFUSED_MODULES[name]}")
            if name not in ALLOWED_TARGET_MODULES:
                raise ValueError(
                    f"{name} is not a supported target module; use a subset of "
                    + ", ".join(ALLOWED_TARGET_MODULES)
                )
        if len(set(value)) != len(value):
            raise ValueError("target_modules has duplicates")
        return value


class TrainingData(_Strict):
    dataset_id: Identifier
    samples: int | None = Field(None, ge=1, le=1_000_000)


class CreateAdapterRequest(_Strict):
    adapter_id: Identifier
    base_model: Identifier
    task: str | None = Field(None, max_length=200)
    rank: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1, le=1024)
    training_data: TrainingData
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    description: str | None = Field(None, max_length=2000)


class UpdateAdapterRequest(_Strict):
    additional_training_data: TrainingData


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    context_length: int | None = Field(None, ge=1, le=10**9)
    vocab_size: int | None = Field(None, ge=1, le=10**9)

    @model_validator(mode="after")
    def _storable_extras(self) -> ModelMetadata:
        """Free-form metadata must fit a DynamoDB item: no NaN/inf, no numbers beyond its
        38 digits, and a few KiB in all."""
        extras = self.model_extra or {}
        try:
            size = len(json.dumps(extras, allow_nan=False))
        except (ValueError, RecursionError) as exc:
            raise ValueError("metadata must not contain NaN, Infinity or deep nesting") from exc
        if size > 8192:
            raise ValueError("metadata is larger than 8 KiB")

        def check(value: Any) -> None:
            if isinstance(value, bool):
                return
            if isinstance(value, int) and abs(value) >= 10**38:
                raise ValueError("metadata numbers must have at most 38 digits")
            if isinstance(value, float) and value != 0 and not 1e-130 < abs(value) < 1e125:
                raise ValueError("metadata numbers must be between 1e-130 and 1e125")
            for item in value.values() if isinstance(value, dict) else (
                    value if isinstance(value, list) else ()):
                check(item)

        check(extras)
        return self


class RegisterModelRequest(_Strict):
    model_id: Identifier
    architecture: str = Field(min_length=1, max_length=64)
    parameter_count: int | None = Field(None, ge=1, le=10**15)
    quantization: str | None = Field(None, max_length=32)
    gguf_path: str | None = Field(None, max_length=2048)
    description: str | None = Field(None, max_length=2000)
    metadata: ModelMetadata = Field(default_factory=ModelMetadata)


class QueryRequest(_Strict):
    model_id: Identifier
    adapter_id: Identifier | None = None
    version: Annotated[str, StringConstraints(pattern=r"^v1\.\d{1,6}$")] | None = None
    prompt: str = Field(min_length=1, max_length=100_000)
    max_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=8
    )
    seed: int | None = None
    user_id: str | None = Field(None, max_length=256)


class DatasetJsonUpload(_Strict):
    dataset_id: Identifier
    description: str | None = Field(None, max_length=2000)
    records: list[Any] = Field(min_length=1)


# --- dataset records ---------------------------------------------------------------------

_ROLES = {"system", "user", "assistant"}


def normalize_record(obj: Any) -> tuple[dict[str, Any], str]:
    """One decoded record -> (normalized record, format). ValueError with a reason."""
    if not isinstance(obj, dict):
        raise ValueError("record must be a JSON object")
    keys = set(obj)
    if "messages" in keys:
        if keys - {"messages"}:
            raise ValueError("a chat record holds only 'messages'")
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
            if m["role"] not in _ROLES:
                raise ValueError(f"messages[{i}].role must be one of system, user, assistant")
            if not isinstance(m["content"], str):
                raise ValueError(f"messages[{i}].content must be a string")
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" and m["content"] for m in out):
            raise ValueError("a chat record needs at least one non-empty assistant message")
        return {"messages": out}, "chat"
    if "prompt" in keys or "completion" in keys:
        if keys != {"prompt", "completion"}:
            raise ValueError("a prompt/completion record holds exactly 'prompt' and 'completion'")
        p, c = obj["prompt"], obj["completion"]
        if not isinstance(p, str) or not isinstance(c, str):
            raise ValueError("'prompt' and 'completion' must be strings")
        if not c.strip():
            raise ValueError("'completion' must not be empty")
        return {"prompt": p, "completion": c}, "prompt_completion"
    if "instruction" in keys or "output" in keys:
        if not keys <= {"instruction", "input", "output"} or not {"instruction", "output"} <= keys:
            raise ValueError(
                "an instruction record holds 'instruction', 'output' and optional 'input'"
            )
        ins, inp, outp = obj["instruction"], obj.get("input", ""), obj["output"]
        if not all(isinstance(x, str) for x in (ins, inp, outp)):
            raise ValueError("'instruction', 'input' and 'output' must be strings")
        if not ins.strip() or not outp.strip():
            raise ValueError("'instruction' and 'output' must not be empty")
        prompt = ins if not inp.strip() else f"{ins}\n\n{inp}"
        return {"prompt": prompt, "completion": outp}, "instruction"
    raise ValueError(
        "unknown record shape; use prompt/completion, messages, or instruction/input/output"
    )


def validate_records(
    items: list[tuple[int, Any]],
) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    """[(line_number, decoded object)] -> (normalized records, format, errors)."""
    records, formats, errors = [], set(), []
    for line_no, obj in items:
        try:
            rec, fmt = normalize_record(obj)
        except ValueError as exc:
            errors.append({"line": line_no, "reason": str(exc)})
            continue
        records.append(rec)
        formats.add("prompt_completion" if fmt == "instruction" else fmt)
    fmt = formats.pop() if len(formats) == 1 else ("mixed" if formats else "empty")
    return records, fmt, errors


def parse_jsonl(body: bytes) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    """JSONL bytes -> (normalized records, format, every bad line with its number)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return [], "empty", [{"line": 0, "reason": "body is not UTF-8"}]
    items: list[tuple[int, Any]] = []
    errors: list[dict[str, Any]] = []
    # JSONL lines end at "\n" only: str.splitlines() would also split inside a line at
    # U+2028/U+2029/U+0085, which are legal raw in JSON strings.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append({"line": n, "reason": f"invalid JSON: {exc.msg}"})
        except RecursionError:
            errors.append({"line": n, "reason": "invalid JSON: nested too deeply"})
    records, fmt, record_errors = validate_records(items)
    errors = sorted(errors + record_errors, key=lambda e: e["line"])
    return records, fmt, errors
