"""Does llama.cpp + the exported GGUF adapter compute what PEFT computed?

The HF model holds the *dequantized* Q4_K_M weights in float32, while llama.cpp multiplies
with quantized kernels (activations are quantized too), so even the two base models differ.
Parity is therefore judged on the adapter's *effect*, with the base-vs-base divergence
measured alongside as the noise floor:

* kl_adapted: mean over positions of KL(PEFT || llama.cpp+adapter);
* kl_base: the same for the two bases (what the runtimes disagree on without any adapter);
* kl_effect: KL(PEFT || HF base), how much the adapter moves the distribution;
* top1_agreement: argmax agreement between PEFT and llama.cpp+adapter;
* delta_corr: Pearson correlation of the per-token logprob change (adapted minus base) in
  the two runtimes, over the tokens that matter (each position's top-k under either model).

A faithful export reproduces the delta (delta_corr near 1, kl_adapted near kl_base); a wrong
one (missing permutation, wrong alpha, A/B swapped, wrong tensor mapping) changes the delta.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base_cache import BASE_MODEL_LOCK, LoadedBase
from .data import prompt_ids

log = logging.getLogger(__name__)

FIXED_PROMPT = (
    "Question: What is the name of the product, who makes it and what is it used for?\n"
    "Answer: The product is"
)
TOP_K = 32

# Tolerances, chosen from measurements (2026-12-03) on Gemma 3 270M Q4_K_M, CPU llama.cpp
# (llama-cpp-python 0.3.36, 2 threads), rank-8 q/k/v/o adapter, alpha 16, 10 steps at lr 1e-3
# on 8 facts, three prompts (13-27 tokens: this FIXED_PROMPT, a training Q+A, unrelated text):
#
#   export          delta_corr     kl_adapted       top1        (kl_base 0.005-0.028,
#   correct         0.993-0.996    0.007-0.012      0.96-1.00    kl_effect 1.2-3.7)
#   alpha x2        0.72-0.86      2.4-6.8          0.19-0.23
#   alpha x0.5      0.85-0.90      0.40-0.41        0.82-0.85
#   B negated       -0.78..-0.61   2.4-7.5          0.24-0.62
#   q/k B permuted  0.78-0.96      0.07-0.83        0.72-1.00   (llama permute on gemma3)
#   only q/k        0.38-0.48      1.0-2.7          0.52-0.77
#
# The closest wrong export (a stray q/k permutation) reaches delta_corr 0.96 and kl 0.074, so
# the bars sit between that and the correct export's worst case. Later runs agree: the e2e
# test adapter (train prompt+completion, 25 positions) 0.993 / 0.021 / 0.96, an rsLoRA r=16
# adapter 0.994 / 0.005 / 0.95; a float32 tiny Llama (no quantization noise) 0.9999997 /
# 5e-7 / 1.0 correct vs 0.66 / 0.96 / 0.44 with q/k lora_b left unpermuted.
MIN_DELTA_CORR = 0.98
# A weakly trained adapter's deltas are closer to the runtimes' own noise, so the correlation
# of a correct export drops with the effect (measured on 5 records, one rank-8 adapter each:
# kl_effect 3.74 -> delta_corr 0.996; 1.00 -> 0.962; 0.028 -> 0.68, all with kl_adapted
# within 0.03 of kl_base). Below STRONG_EFFECT the bar is WEAK_MIN_DELTA_CORR; below
# NOISE_EFFECT (an effect under ~10x the base-vs-base KL) only the KL and top-1 checks apply.
STRONG_EFFECT = 2.0
WEAK_MIN_DELTA_CORR = 0.95
NOISE_EFFECT = 0.1
MIN_TOP1_AGREEMENT = 0.85
# kl_adapted may exceed the base-vs-base noise floor by this much plus a fraction of the effect.
KL_ABS_MARGIN = 0.02
KL_REL_MARGIN = 0.02


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    n_positions: int
    kl_base: float
    kl_adapted: float
    kl_effect: float
    top1_agreement: float
    top1_agreement_base: float
    delta_corr: float
    tokens_match: bool  # llama.cpp tokenized the prompt exactly as training does
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    base: LoadedBase,
    peft_dir: Path,
    base_gguf_path: Path,
    adapter_gguf_path: Path,
    prompt: str = FIXED_PROMPT,
    n_threads: int = 2,
    last_n: int | None = None,
) -> ParityResult:
    """Compare next-token distributions of PEFT and llama.cpp(+adapter) on ``prompt``."""
    ids = prompt_ids(base.tokenizer, prompt, base.add_bos)
    hf_base, hf_adapted = hf_logprobs(base, Path(peft_dir), ids)
    cpp_tokens = llama_tokenize(base_gguf_path, prompt)
    cpp_base = llama_logprobs(base_gguf_path, None, ids, n_threads)
    cpp_adapted = llama_logprobs(base_gguf_path, adapter_gguf_path, ids, n_threads)
    return compare(
        hf_base, hf_adapted, cpp_base, cpp_adapted, last_n=last_n, tokens_match=cpp_tokens == ids
    )


def compare(
    hf_base: np.ndarray,
    hf_adapted: np.ndarray,
    cpp_base: np.ndarray,
    cpp_adapted: np.ndarray,
    *,
    last_n: int | None = None,
    tokens_match: bool = True,
) -> ParityResult:
    """All inputs: (positions, vocab) log-probabilities over the same token sequence."""
    v = min(a.shape[1] for a in (hf_base, hf_adapted, cpp_base, cpp_adapted))
    arrs = [a[:, :v].astype(np.float64) for a in (hf_base, hf_adapted, cpp_base, cpp_adapted)]
    if last_n:
        arrs = [a[-last_n:] for a in arrs]
    hb, ha, cb, ca = arrs

    kl_base = _kl(hb, cb)
    kl_adapted = _kl(ha, ca)
    kl_effect = _kl(ha, hb)
    top1 = float(np.mean(ha.argmax(-1) == ca.argmax(-1)))
    top1_base = float(np.mean(hb.argmax(-1) == cb.argmax(-1)))

    # Tokens that matter at each position: top-k under either adapted model.
    k = min(TOP_K, v)
    idx = np.concatenate(
        [np.argpartition(-ha, k - 1, axis=1)[:, :k], np.argpartition(-ca, k - 1, axis=1)[:, :k]],
        axis=1,
    )
    rows = np.repeat(np.arange(ha.shape[0]), idx.shape[1])
    cols = idx.reshape(-1)
    d_hf = (ha - hb)[rows, cols]
    d_cpp = (ca - cb)[rows, cols]
    delta_corr = _corr(d_hf, d_cpp)

    reasons = []
    if not tokens_match:
        reasons.append("llama.cpp tokenizes the prompt differently from training")
    min_corr = (MIN_DELTA_CORR if kl_effect >= STRONG_EFFECT
                else WEAK_MIN_DELTA_CORR if kl_effect >= NOISE_EFFECT else None)
    if min_corr is not None and not delta_corr >= min_corr:
        reasons.append(f"delta_corr {delta_corr:.3f} < {min_corr} (adapter effect "
                       f"{kl_effect:.3f} nats, runtime noise {kl_base:.4f})")
    if not top1 >= MIN_TOP1_AGREEMENT:
        reasons.append(f"top1_agreement {top1:.3f} < {MIN_TOP1_AGREEMENT}")
    kl_limit = kl_base + KL_ABS_MARGIN + KL_REL_MARGIN * kl_effect
    if not kl_adapted <= kl_limit:
        reasons.append(f"kl_adapted {kl_adapted:.4f} > {kl_limit:.4f}")
    return ParityResult(
        passed=not reasons,
        n_positions=int(ha.shape[0]),
        kl_base=kl_base,
        kl_adapted=kl_adapted,
        kl_effect=kl_effect,
        top1_agreement=top1,
        top1_agreement_base=top1_base,
        delta_corr=delta_corr,
        tokens_match=tokens_match,
        reasons=reasons,
    )


def _kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    """Mean over rows of KL(p || q), both given as log-probabilities."""
    p = np.exp(p_log)
    return float(np.mean(np.sum(p * (p_log - q_log), axis=1)))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def hf_logprobs(base: LoadedBase, peft_dir: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(base, adapted) log-probs from transformers; the shared base is left unmodified."""
    import torch
    from peft import PeftModel

    model = base.model
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    with BASE_MODEL_LOCK, torch.no_grad():
        b = model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()
        peft_model = PeftModel.from_pretrained(model, str(peft_dir))
        try:
            peft_model.eval()
            a = peft_model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()
        finally:
            peft_model.unload()
            if "peft_config" in vars(model):
                del model.peft_config
    return _log_softmax(b), _log_softmax(a)


def llama_tokenize(gguf_path: Path, text: str) -> list[int]:
    """The tokens llama.cpp's completion path feeds for ``text`` (BOS per GGUF, specials on)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        add_bos = llm._model.add_bos_token()
        return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))
    finally:
        llm.close()


def llama_logprobs(
    gguf_path: Path, adapter_path: Path | None, ids: list[int], n_threads: int = 2
) -> np.ndarray:
    """Per-position log-probs from llama.cpp for ``ids``, with the adapter at scale 1.0."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(gguf_path),
        lora_path=str(adapter_path) if adapter_path else None,
        logits_all=True,
        n_ctx=max(64, len(ids) + 8),
        n_batch=max(64, len(ids) + 8),
        n_threads=n_threads,
        n_threads_batch=n_threads,
        seed=0,
        verbose=False,
    )
    try:
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    return _log_softmax(logits)
