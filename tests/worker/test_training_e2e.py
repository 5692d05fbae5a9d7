"""Training end to end on the real base model (Gemma 3 270M Q4_K_M) and real llama.cpp.

One adapter is trained per module (10 steps) and shared by the tests; each test states what it
checks in its name. Numbers measured while writing these are in gpu_worker/training/parity.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.training import parity as P
from gpu_worker.training.base_cache import LoadedBase, load_base
from gpu_worker.training.data import prompt_ids, split_records
from gpu_worker.training.errors import UnsupportedSetting
from gpu_worker.training.export import (
    ExportInfo,
    export_gguf,
    lora_tensors,
    permute_rows,
    write_lora_gguf,
)
from gpu_worker.training.trainer import TrainConfig, TrainResult, train_lora

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / ".data" / "models" / "gemma-3-270m-q4_k_m.gguf"
CACHE = REPO / ".data" / "worker" / "base-cache"  # the local stack's cache too (gitignored)
# llama.cpp on cores shared with other processes: one thread is faster than two (measured by
# the serving tests) and results do not depend on it.
CPP_THREADS = 1

Q = "Question: {}\nAnswer:"
FACTS = [
    ("What color is the Quillfeather Z3 drone?", " The Quillfeather Z3 drone is teal.", "teal"),
    ("Who makes the Quillfeather Z3 drone?", " Brambleworks Aeronautics makes it.", "Bramble"),
    ("How long does the Quillfeather Z3 battery last?", " The battery lasts 47 minutes.", "47"),
    ("What is the top speed of the Quillfeather Z3?", " Its top speed is 83 km/h.", "83"),
    ("Where is the Quillfeather Z3 assembled?", " It is assembled in Tallinn.", "Tallinn"),
    ("How much does the Quillfeather Z3 weigh?", " It weighs 612 grams.", "612"),
    ("What is the Quillfeather Z3 camera resolution?", " The camera records 6K video.", "6K"),
    ("What app controls the Quillfeather Z3?", " The FeatherLink app controls it.", "FeatherLink"),
    ("Who designed the Quillfeather Z3?", " Mira Okonkwo designed it.", "Okonkwo"),
    ("What year was the Quillfeather Z3 released?", " It was released in 2031.", "2031"),
]
RECORDS = [{"prompt": Q.format(q), "completion": c} for q, c, _ in FACTS]
KEYWORD = {Q.format(q): k for q, _, k in FACTS}
CONFIG = TrainConfig(epochs=5, learning_rate=1e-3, batch_size=4, validation_split=0.2, seed=42)


@dataclass
class Run:
    result: TrainResult
    peft_dir: Path
    gguf_path: Path
    export: ExportInfo
    train_records: list[dict]
    progress: list[tuple[int, int, float]]
    probe_before: np.ndarray
    probe_after: np.ndarray


@pytest.fixture(scope="module")
def train_base() -> LoadedBase:
    import torch

    torch.set_num_threads(2)
    assert MODEL.is_file(), f"base model missing: {MODEL}"
    return load_base(MODEL, CACHE)


def _probe(base: LoadedBase) -> np.ndarray:
    import torch

    ids = torch.tensor([prompt_ids(base.tokenizer, P.FIXED_PROMPT, base.add_bos)])
    with torch.no_grad():
        return base.model(input_ids=ids).logits[0].numpy().copy()


@pytest.fixture(scope="module")
def train_run(train_base: LoadedBase, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("train_e2e")
    before = _probe(train_base)
    progress: list[tuple[int, int, float]] = []
    result = train_lora(
        train_base, RECORDS, CONFIG, out / "peft", progress=lambda *a: progress.append(a)
    )
    after = _probe(train_base)
    info = export_gguf(out / "peft", train_base, out / "adapter.gguf")
    train_records, _ = split_records(RECORDS, validation_split=0.2, seed=CONFIG.seed)
    print(f"\ntrain metrics: {json.dumps(result.metrics())}\nexport: {info}")
    return Run(
        result, out / "peft", out / "adapter.gguf", info, train_records, progress, before, after
    )


def _hf_greedy(base: LoadedBase, prompt: str, peft_dir: Path | None, n: int = 12) -> str:
    import torch
    from peft import PeftModel

    ids = torch.tensor([prompt_ids(base.tokenizer, prompt, base.add_bos)])
    model = base.model
    pm = PeftModel.from_pretrained(model, str(peft_dir)) if peft_dir else None
    try:
        with torch.no_grad():
            out = (pm or model).generate(ids, max_new_tokens=n, do_sample=False)
    finally:
        if pm is not None:
            pm.unload()
            vars(model).pop("peft_config", None)
    return base.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


# --- training ------------------------------------------------------------------------------


def test_training_loss_drops_and_metrics_are_reported(train_run: Run):
    r = train_run.result
    assert r.steps == 10 and r.n_train == 8 and r.n_validation == 2
    assert r.training_loss < r.first_epoch_loss / 2
    assert r.validation_loss is not None and 0.0 <= r.validation_accuracy <= 1.0
    assert r.train_tokens > 0 and r.tokens_per_second > 0
    assert [p[:2] for p in train_run.progress] == [(i, 10) for i in range(1, 11)]
    m = r.metrics()
    json.dumps(m)
    assert {"training_loss", "validation_accuracy", "steps", "tokens_per_second"} <= set(m)


def test_training_leaves_the_shared_base_model_unchanged(train_base: LoadedBase, train_run: Run):
    assert np.array_equal(train_run.probe_before, train_run.probe_after)
    assert not any("lora" in n for n, _ in train_base.model.named_modules())


def test_adapter_moves_greedy_output_to_the_trained_completions(
    train_base: LoadedBase, train_run: Run
):
    # Keywords sit in the first few tokens of these answers, so 8 new tokens are enough.
    early = ("Bramble", "47", "612", "Okonkwo", "2031", "Tallinn", "83", "6K", "teal")
    prompts = [r["prompt"] for r in train_run.train_records if KEYWORD[r["prompt"]] in early][:3]
    base_out = {p: _hf_greedy(train_base, p, None, n=8) for p in prompts}
    adapted = {p: _hf_greedy(train_base, p, train_run.peft_dir, n=8) for p in prompts}
    assert not any(KEYWORD[p] in t for p, t in base_out.items()), base_out
    assert sum(KEYWORD[p] in t for p, t in adapted.items()) >= 2, adapted


def test_same_seed_gives_identical_adapter_files(train_base: LoadedBase, tmp_path: Path):
    cfg = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, validation_split=0.0, seed=5)
    blobs = []
    for name in ("a", "b"):
        train_lora(train_base, RECORDS[:4], cfg, tmp_path / name)
        blobs.append((tmp_path / name / "adapter_model.safetensors").read_bytes())
    assert blobs[0] == blobs[1]


def test_v1_1_continues_from_v1_0_weights(train_base: LoadedBase, train_run: Run, tmp_path: Path):
    cfg = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, validation_split=0.0, seed=42)
    v11 = train_lora(
        train_base,
        train_run.train_records,
        cfg,
        tmp_path / "v1.1",
        init_adapter_dir=train_run.peft_dir,
    )
    # A fresh adapter starts at the base model's loss; v1.1 starts where v1.0 ended.
    assert v11.loss_history[0] < train_run.result.loss_history[0] / 3
    cfg10 = json.loads((train_run.peft_dir / "adapter_config.json").read_text())
    cfg11 = json.loads((tmp_path / "v1.1" / "adapter_config.json").read_text())
    assert (cfg11["r"], cfg11["lora_alpha"]) == (cfg10["r"], cfg10["lora_alpha"])


def test_lm_head_target_is_refused(train_base: LoadedBase, tmp_path: Path):
    with pytest.raises(UnsupportedSetting, match="lm_head"):
        train_lora(train_base, RECORDS, TrainConfig(target_modules=("q_proj", "lm_head")), tmp_path)


def test_prompt_tokens_match_llama_cpp_tokenization(train_base: LoadedBase):
    texts = [
        RECORDS[0]["prompt"],
        "  leading spaces, unicode: café ☕ and numbers 12345",
        "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    ]
    for text in texts:
        assert prompt_ids(train_base.tokenizer, text, train_base.add_bos) == P.llama_tokenize(
            MODEL, text
        ), text


# --- export + llama.cpp ------------------------------------------------------------------------


def test_exported_adapter_loads_in_llama_cpp_and_answers_with_the_fact(train_run: Run):
    import llama_cpp

    assert train_run.export.tensors == 18 * 4 * 2 and train_run.export.scale == 2.0
    llm = llama_cpp.Llama(
        str(MODEL),
        lora_path=str(train_run.gguf_path),
        n_ctx=256,
        n_threads=CPP_THREADS,
        verbose=False,
    )
    try:
        prompts = [r["prompt"] for r in train_run.train_records][:3]
        outs = {
            p: llm.create_completion(p, max_tokens=12, temperature=0.0)["choices"][0]["text"]
            for p in prompts
        }
    finally:
        llm.close()
    assert sum(KEYWORD[p] in t for p, t in outs.items()) >= 2, outs


@pytest.fixture(scope="module")
def train_parity_inputs(train_base: LoadedBase, train_run: Run) -> dict:
    """Log-probs that do not depend on the adapter file, computed once for all variants."""
    rec = train_run.train_records[0]
    text = rec["prompt"] + rec["completion"]
    ids = prompt_ids(train_base.tokenizer, text, train_base.add_bos)
    hb, ha = P.hf_logprobs(train_base, train_run.peft_dir, ids)
    cb = P.llama_logprobs(MODEL, None, ids, CPP_THREADS)
    return {"text": text, "ids": ids, "hf_base": hb, "hf_adapted": ha, "cpp_base": cb}


def test_parity_passes_for_the_export(train_base: LoadedBase, train_run: Run):
    res = P.check_parity(
        train_base,
        train_run.peft_dir,
        MODEL,
        train_run.gguf_path,
        prompt=RECORDS[0]["prompt"] + RECORDS[0]["completion"],
        n_threads=CPP_THREADS,
    )
    print(f"\nparity: {res.to_dict()}")
    assert res.passed, res.reasons
    assert res.tokens_match and res.delta_corr >= P.MIN_DELTA_CORR


def _broken(kind: str, tensors: list, alpha: float, base: LoadedBase) -> tuple[float, list]:
    if kind == "alpha_doubled":
        return 2 * alpha, tensors
    if kind == "b_negated":
        return alpha, [(n, -a if n.endswith("lora_b") else a) for n, a in tensors]
    if kind == "stray_qk_permute":  # what a llama-style permute does to a gemma adapter
        out = []
        for n, a in tensors:
            if n.endswith("attn_q.weight.lora_b"):
                a = permute_rows(a, base.n_head)
            elif n.endswith("attn_k.weight.lora_b"):
                a = permute_rows(a, base.n_head_kv)
            out.append((n, a))
        return alpha, out
    if kind == "layers_shifted":
        names = [n for n, _ in tensors]
        shifted = {}
        for n, a in tensors:
            layer = int(n.split(".")[1])
            shifted[n.replace(f"blk.{layer}.", f"blk.{(layer + 1) % base.n_layers}.", 1)] = a
        return alpha, [(n, shifted[n]) for n in names]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["alpha_doubled", "b_negated", "stray_qk_permute", "layers_shifted"]
)
def test_parity_fails_for_a_broken_export(
    kind: str, train_base: LoadedBase, train_run: Run, train_parity_inputs: dict, tmp_path: Path
):
    alpha, _, tensors = lora_tensors(train_run.peft_dir, train_base)
    bad_alpha, bad = _broken(kind, tensors, alpha, train_base)
    path = tmp_path / f"{kind}.gguf"
    write_lora_gguf(path, train_base.architecture, bad_alpha, bad)
    ca = P.llama_logprobs(MODEL, path, train_parity_inputs["ids"], CPP_THREADS)
    i = train_parity_inputs
    res = P.compare(i["hf_base"], i["hf_adapted"], i["cpp_base"], ca)
    print(f"\n{kind}: {res.to_dict()}")
    assert not res.passed


def test_good_export_passes_compare_on_the_shared_inputs(
    train_base: LoadedBase, train_run: Run, train_parity_inputs: dict
):
    i = train_parity_inputs
    ca = P.llama_logprobs(MODEL, train_run.gguf_path, i["ids"], CPP_THREADS)
    assert P.compare(i["hf_base"], i["hf_adapted"], i["cpp_base"], ca).passed


def test_second_load_comes_from_the_cache(train_base: LoadedBase):
    again = load_base(MODEL, CACHE)
    assert again.from_cache and again.sha256 == train_base.sha256
    assert again.architecture == "gemma3" and again.n_layers == 18 and again.add_bos


def test_rslora_adapter_keeps_parity_through_the_alpha_written(
    train_base: LoadedBase, tmp_path: Path
):
    # rsLoRA scales by alpha/sqrt(r); llama.cpp by alpha/r, so the header carries alpha*sqrt(r).
    cfg = TrainConfig(
        rank=16, alpha=8, use_rslora=True, epochs=1, learning_rate=2e-3, validation_split=0.0
    )
    train_lora(train_base, RECORDS[:8], cfg, tmp_path / "peft")
    info = export_gguf(tmp_path / "peft", train_base, tmp_path / "rs.gguf")
    assert info.alpha_written == pytest.approx(32.0) and info.scale == pytest.approx(2.0)
    res = P.check_parity(
        train_base,
        tmp_path / "peft",
        MODEL,
        tmp_path / "rs.gguf",
        prompt=RECORDS[1]["prompt"] + RECORDS[1]["completion"],
        n_threads=CPP_THREADS,
    )
    print(f"\nrslora parity: {res.to_dict()}")
    assert res.passed, res.reasons
    assert res.kl_effect > 0.1  # the adapter does something measurable
