"""Normalized dataset records -> token ids with prompt-masked labels.

The query path sends the user's prompt to llama.cpp verbatim, and llama.cpp tokenizes it with
special tokens parsed and BOS prepended when the GGUF says so (tokenizer.ggml.add_bos_token).
Training must see exactly the same prompt tokens, so an example is built as

    [BOS if add_bos] + tokens(prompt) + tokens(completion) + [EOS]

with the prompt tokenized on its own (never merged across the prompt/completion boundary),
and labels = -100 everywhere except the completion tokens and the final EOS.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100

# Used only when the tokenizer carries no chat template (GGUF files often do not). Gemma models
# get their own turn markers; everything else gets ChatML, the most widely shared format.
_GEMMA_ARCHS = frozenset({"gemma", "gemma2", "gemma3"})


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass(frozen=True)
class PreparedData:
    train: list[Example]
    validation: list[Example]
    n_records: int  # records considered (after the `samples` cap)
    n_dropped: int  # records that produced no supervised token (e.g. truncated away)


def record_prompt_completion(
    record: dict[str, Any], tokenizer: Any, architecture: str = ""
) -> tuple[str, str]:
    """Split a normalized record into (prompt text, completion text)."""
    if "messages" in record:
        msgs = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        last = max(
            (i for i, m in enumerate(msgs) if m["role"] == "assistant"),
            default=None,
        )
        if last is None:
            raise ValueError("chat record without an assistant message")
        prompt = render_chat_prompt(msgs[:last], tokenizer, architecture)
        return prompt, msgs[last]["content"]
    if "prompt" in record and "completion" in record:
        return str(record["prompt"]), str(record["completion"])
    raise ValueError("record is neither {prompt, completion} nor {messages}")


def render_chat_prompt(messages: list[dict[str, str]], tokenizer: Any, architecture: str) -> str:
    """All turns before the answer, followed by the generation prompt for the assistant.

    A leading BOS *text* is removed: BOS is added as a token by the tokenization rule, exactly
    once, the way llama.cpp does it.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif architecture in _GEMMA_ARCHS:
        text = _render_gemma(messages)
    else:
        text = _render_chatml(messages)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    return text


def _render_gemma(messages: list[dict[str, str]]) -> str:
    # Gemma has no system role: the system text is prepended to the first user turn.
    out: list[str] = []
    pending_system = ""
    for m in messages:
        if m["role"] == "system":
            pending_system += m["content"] + "\n\n"
            continue
        role = "model" if m["role"] == "assistant" else "user"
        content = m["content"]
        if role == "user" and pending_system:
            content, pending_system = pending_system + content, ""
        out.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    if pending_system:
        out.append(f"<start_of_turn>user\n{pending_system.rstrip()}<end_of_turn>\n")
    out.append("<start_of_turn>model\n")
    return "".join(out)


def _render_chatml(messages: list[dict[str, str]]) -> str:
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with special tokens parsed and no BOS/EOS added."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, prompt: str, add_bos: bool) -> list[int]:
    """How llama.cpp tokenizes a prompt it is given verbatim."""
    ids = encode(tokenizer, prompt)
    if add_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def build_example(
    record: dict[str, Any],
    tokenizer: Any,
    *,
    add_bos: bool,
    max_seq_length: int,
    architecture: str = "",
) -> Example | None:
    """One record -> Example, or None when no completion token survives truncation."""
    prompt, completion = record_prompt_completion(record, tokenizer, architecture)
    p_ids = prompt_ids(tokenizer, prompt, add_bos)
    c_ids = encode(tokenizer, completion)
    if tokenizer.eos_token_id is not None:
        c_ids.append(tokenizer.eos_token_id)
    ids = (p_ids + c_ids)[:max_seq_length]
    labels = ([IGNORE_INDEX] * len(p_ids) + c_ids)[:max_seq_length]
    # Loss at position t predicts token t+1, so the first supervised token needs one token of
    # context before it; a record whose completion was truncated away teaches nothing.
    if not any(lab != IGNORE_INDEX for lab in labels[1:]):
        return None
    return Example(input_ids=ids, labels=labels)


def split_records(
    records: Sequence[dict[str, Any]],
    *,
    validation_split: float,
    seed: int,
    samples: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded selection (``samples`` cap) and train/validation split at record level.

    With >= 5 records and validation_split > 0 at least one record is held out; at least one
    record always stays in training.
    """
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    if samples is not None and samples < len(order):
        order = order[:samples]
    n = len(order)
    n_val = 0
    if validation_split > 0 and n > 1:
        n_val = int(round(n * validation_split))
        if n >= 5:
            n_val = max(n_val, 1)
        n_val = min(n_val, n - 1)
    val_idx = sorted(order[:n_val])
    train_idx = sorted(order[n_val:])
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


def prepare_examples(
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    add_bos: bool,
    max_seq_length: int,
    validation_split: float,
    seed: int,
    samples: int | None = None,
    architecture: str = "",
) -> PreparedData:
    train_recs, val_recs = split_records(
        records, validation_split=validation_split, seed=seed, samples=samples
    )
    dropped = 0

    def build(recs: list[dict[str, Any]]) -> list[Example]:
        nonlocal dropped
        out = []
        for r in recs:
            ex = build_example(
                r,
                tokenizer,
                add_bos=add_bos,
                max_seq_length=max_seq_length,
                architecture=architecture,
            )
            if ex is None:
                dropped += 1
            else:
                out.append(ex)
        return out

    train = build(train_recs)
    validation = build(val_recs)
    return PreparedData(
        train=train,
        validation=validation,
        n_records=len(train_recs) + len(val_recs),
        n_dropped=dropped,
    )
