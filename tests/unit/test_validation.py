"""Dataset line validation and training-settings ranges (tables of bad inputs)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lora_common.validation import CreateAdapterRequest, TrainingSettings, parse_jsonl

pytestmark = pytest.mark.unit


def test_given_three_formats_then_normalized():
    body = "\n".join(
        [
            json.dumps({"prompt": "p", "completion": "c"}),
            json.dumps({"instruction": "do", "input": "x", "output": "y"}),
            "",
            json.dumps({"instruction": "do", "output": "y"}),
        ]
    ).encode()
    records, fmt, errors = parse_jsonl(body)
    assert errors == []
    assert fmt == "prompt_completion"
    assert records[1] == {"prompt": "do\n\nx", "completion": "y"}
    assert records[2] == {"prompt": "do", "completion": "y"}


def test_given_chat_records_then_chat_format():
    line = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    records, fmt, errors = parse_jsonl(json.dumps(line).encode())
    assert (fmt, errors, records) == ("chat", [], [line])


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"prompt": "p"}', "exactly"),
        ('{"prompt": 1, "completion": "c"}', "strings"),
        ('{"prompt": "p", "completion": "  "}', "empty"),
        ('{"messages": []}', "non-empty"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "role"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "assistant"),
        ('{"text": "x"}', "unknown record shape"),
        ('{"instruction": "", "output": "y"}', "empty"),
    ],
)
def test_given_bad_line_then_reported_by_number(line, reason):
    good = json.dumps({"prompt": "p", "completion": "c"})
    _, _, errors = parse_jsonl(f"{good}\n{line}\n{good}".encode())
    assert len(errors) == 1
    assert errors[0]["line"] == 2
    assert reason in errors[0]["reason"]


def test_training_defaults():
    t = TrainingSettings()
    assert (t.epochs, t.learning_rate, t.max_seq_length, t.batch_size) == (3, 2e-4, 256, 4)
    assert t.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (t.validation_split, t.seed, t.use_rslora, t.lora_dropout) == (0.1, 42, False, 0.0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("epochs", 51),
        ("learning_rate", 1e-7),
        ("learning_rate", 0.1),
        ("max_seq_length", 8),
        ("max_seq_length", 8192),
        ("batch_size", 0),
        ("batch_size", 65),
        ("validation_split", 0.6),
        ("lora_dropout", 0.6),
        ("target_modules", []),
        ("target_modules", ["lm_head"]),
        ("target_modules", ["embed_tokens"]),
        ("target_modules", ["modules_to_save"]),
        ("target_modules", ["c_attn"]),
    ],
)
def test_training_out_of_range_refused(field, value):
    with pytest.raises(ValidationError):
        TrainingSettings(**{field: value})


def test_lm_head_refusal_says_why():
    with pytest.raises(ValidationError, match="lm_head is not allowed"):
        TrainingSettings(target_modules=["q_proj", "lm_head"])


@pytest.mark.parametrize("rank, alpha", [(0, 16), (257, 16), (8, 0), (8, 1025)])
def test_rank_alpha_ranges(rank, alpha):
    with pytest.raises(ValidationError):
        CreateAdapterRequest(
            adapter_id="a",
            base_model="m",
            rank=rank,
            alpha=alpha,
            training_data={"dataset_id": "d"},
        )


@pytest.mark.parametrize("bad_id", ["", "a#b", "a/b", "-x", "a b", "x" * 129])
def test_ids_that_would_break_keys_refused(bad_id):
    with pytest.raises(ValidationError):
        CreateAdapterRequest(adapter_id=bad_id, base_model="m", training_data={"dataset_id": "d"})
