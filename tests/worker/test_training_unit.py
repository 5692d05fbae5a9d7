"""Training package, pure logic and a tiny Llama built in the test (no real model, no llama.cpp).

The real-model path (Gemma 3 270M + llama.cpp) is in test_training_e2e.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest

from gpu_worker.training import data as D
from gpu_worker.training import parity as P
from gpu_worker.training.base_cache import LoadedBase, file_sha256, load_base
from gpu_worker.training.errors import EmptyDataset, UnsupportedArchitecture, UnsupportedSetting
from gpu_worker.training.export import export_gguf, gguf_alpha, permute_rows
from gpu_worker.training.parity import compare
from gpu_worker.training.trainer import TrainConfig, train_lora

pytestmark = pytest.mark.unit


class ByteTokenizer:
    """Byte-level stand-in for a HF tokenizer: ids 0 pad, 1 bos, 2 eos, 3.. bytes."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    bos_token = "<s>"
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [b + 3 for b in text.encode("utf-8")]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", "replace")


RECORDS = [
    {"prompt": f"Q: code of item {i}?\nA:", "completion": f" item {i} has code {i * 7 % 10}."}
    for i in range(8)
]


def tiny_base(seed: int = 0) -> LoadedBase:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=260,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation="eager",
        # Larger than the default 0.02 so that a rank-8 LoRA can move the output in a few steps.
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    return LoadedBase(
        model=model,
        tokenizer=ByteTokenizer(),
        architecture="llama",
        sha256="0" * 64,
        n_layers=2,
        n_head=4,
        n_head_kv=2,
        add_bos=True,
        gguf_path=Path("tiny.gguf"),
    )


@pytest.fixture(scope="module")
def train_tiny_base() -> LoadedBase:
    return tiny_base()


def tiny_config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=4, learning_rate=3e-2, validation_split=0.0, seed=7)
    return TrainConfig(**{**base, **kw})


# --- data --------------------------------------------------------------------------------


def test_given_prompt_completion_when_built_then_only_completion_and_eos_are_labelled():
    tok = ByteTokenizer()
    ex = D.build_example({"prompt": "ab", "completion": "cd"}, tok, add_bos=True, max_seq_length=64)
    assert ex.input_ids == [1, ord("a") + 3, ord("b") + 3, ord("c") + 3, ord("d") + 3, 2]
    assert ex.labels == [-100, -100, -100, ord("c") + 3, ord("d") + 3, 2]


def test_given_add_bos_false_then_no_bos_is_prepended():
    ex = D.build_example(
        {"prompt": "ab", "completion": "c"}, ByteTokenizer(), add_bos=False, max_seq_length=64
    )
    assert ex.input_ids[0] == ord("a") + 3


def test_given_long_prompt_when_truncated_away_then_record_is_dropped():
    tok = ByteTokenizer()
    assert (
        D.build_example(
            {"prompt": "x" * 50, "completion": "y"}, tok, add_bos=True, max_seq_length=20
        )
        is None
    )
    ex = D.build_example(
        {"prompt": "x", "completion": "y" * 50}, tok, add_bos=True, max_seq_length=20
    )
    assert len(ex.input_ids) == len(ex.labels) == 20


def test_given_chat_record_without_template_then_gemma_turns_and_last_assistant_is_target():
    rec = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Name?"},
            {"role": "assistant", "content": "Zed"},
        ]
    }
    prompt, completion = D.record_prompt_completion(rec, ByteTokenizer(), "gemma3")
    assert completion == "Zed"
    assert prompt == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nName?<end_of_turn>\n<start_of_turn>model\n"
    )
    chatml, _ = D.record_prompt_completion(rec, ByteTokenizer(), "qwen2")
    assert chatml.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "n,split,expected_val", [(4, 0.1, 0), (5, 0.1, 1), (10, 0.2, 2), (5, 0.0, 0)]
)
def test_split_sizes(n, split, expected_val):
    recs = [{"prompt": str(i), "completion": "x"} for i in range(n)]
    train, val = D.split_records(recs, validation_split=split, seed=1)
    assert len(val) == expected_val and len(train) == n - expected_val


def test_split_and_samples_are_seeded_and_deterministic():
    recs = [{"prompt": str(i), "completion": "x"} for i in range(40)]
    a = D.split_records(recs, validation_split=0.25, seed=3, samples=20)
    b = D.split_records(recs, validation_split=0.25, seed=3, samples=20)
    c = D.split_records(recs, validation_split=0.25, seed=4, samples=20)
    assert a == b and a != c
    assert len(a[0]) + len(a[1]) == 20 and len(a[1]) == 5


# --- config refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"target_modules": ("q_proj", "lm_head")}, "lm_head"),
        ({"target_modules": ("embed_tokens",)}, "embed"),
        ({"modules_to_save": ("lm_head",)}, "modules_to_save"),
        ({"target_modules": ()}, "empty"),
        ({"rank": 0}, "rank"),
    ],
)
def test_given_unexportable_setting_when_training_then_refused_before_any_work(
    kw, needle, tmp_path
):
    # The base is never touched: a refusal must not need a model at all.
    with pytest.raises(UnsupportedSetting, match=needle):
        train_lora(None, RECORDS, tiny_config(**kw), tmp_path)  # type: ignore[arg-type]


def test_from_settings_takes_known_keys():
    cfg = TrainConfig.from_settings(
        {"epochs": 2, "target_modules": ["q_proj"], "use_rslora": True, "unknown": 1},
        rank=4,
        alpha=8,
        samples=3,
    )
    assert (cfg.epochs, cfg.target_modules, cfg.rank, cfg.samples) == (2, ("q_proj",), 4, 3)
    assert math.isclose(cfg.scaling, 8 / 2)


# --- training on the tiny model ------------------------------------------------------------


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_given_tiny_model_when_trained_then_loss_drops_and_base_is_unchanged(
    train_tiny_base, tmp_path
):
    before = _state(train_tiny_base.model)
    calls = []
    res = train_lora(
        train_tiny_base,
        RECORDS,
        tiny_config(epochs=6),
        tmp_path / "a",
        progress=lambda step, total, _loss: calls.append((step, total)),
    )
    assert res.training_loss < res.first_epoch_loss * 0.8
    assert calls[-1] == (res.steps, res.steps) == (12, 12)
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    # The shared base: same tensors, same module tree, no PEFT leftovers.
    after = train_tiny_base.model.state_dict()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert not any("lora" in n for n, _ in train_tiny_base.model.named_modules())
    assert not hasattr(train_tiny_base.model, "peft_config")


def test_same_seed_gives_identical_adapter_bytes_and_other_seed_differs(train_tiny_base, tmp_path):
    outs = []
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        train_lora(
            train_tiny_base, RECORDS, tiny_config(seed=seed, lora_dropout=0.1), tmp_path / name
        )
        outs.append((tmp_path / name / "adapter_model.safetensors").read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_validation_metrics_present_with_held_out_records(train_tiny_base, tmp_path):
    recs = RECORDS + [{"prompt": "Q: code of item 9?\nA:", "completion": " item 9 has code 3."}]
    res = train_lora(train_tiny_base, recs, tiny_config(validation_split=0.2), tmp_path / "v")
    assert res.n_validation == 2 and res.n_train == 7
    assert 0.0 <= res.validation_accuracy <= 1.0 and res.validation_loss > 0
    none = train_lora(train_tiny_base, RECORDS[:3], tiny_config(epochs=1), tmp_path / "n")
    assert none.validation_accuracy is None and none.metrics()["validation_loss"] is None


def test_given_previous_version_when_continuing_then_training_starts_from_its_weights(
    train_tiny_base, tmp_path
):
    v10 = train_lora(train_tiny_base, RECORDS, tiny_config(epochs=6), tmp_path / "v1.0")
    v11 = train_lora(
        train_tiny_base,
        RECORDS,
        tiny_config(epochs=1),
        tmp_path / "v1.1",
        init_adapter_dir=tmp_path / "v1.0",
    )
    fresh = train_lora(train_tiny_base, RECORDS, tiny_config(epochs=1), tmp_path / "fresh")
    # The first step of v1.1 already sees v1.0's fit, a fresh adapter does not.
    assert v11.loss_history[0] < fresh.loss_history[0] * 0.8
    assert v11.loss_history[0] < v10.first_epoch_loss
    with pytest.raises(UnsupportedSetting, match="same rank"):
        train_lora(
            train_tiny_base,
            RECORDS,
            tiny_config(rank=4),
            tmp_path / "bad",
            init_adapter_dir=tmp_path / "v1.0",
        )


def test_given_records_with_nothing_to_learn_then_empty_dataset(train_tiny_base, tmp_path):
    recs = [{"prompt": "x" * 40, "completion": "y"}] * 3
    with pytest.raises(EmptyDataset):
        train_lora(train_tiny_base, recs, tiny_config(max_seq_length=16), tmp_path / "e")


def test_given_target_module_missing_in_architecture_then_unsupported(train_tiny_base, tmp_path):
    with pytest.raises(UnsupportedSetting):
        train_lora(train_tiny_base, RECORDS, tiny_config(target_modules=("qkv_proj",)), tmp_path)
    # A partly valid list is refused too (PEFT alone would silently train only q_proj).
    with pytest.raises(UnsupportedSetting, match="qkv_proj"):
        train_lora(
            train_tiny_base, RECORDS, tiny_config(target_modules=("q_proj", "qkv_proj")), tmp_path
        )
    assert not any("lora" in n for n, _ in train_tiny_base.model.named_modules())


# --- export --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_tiny_adapter(train_tiny_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "peft"
    train_lora(
        train_tiny_base,
        RECORDS,
        tiny_config(target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")),
        out,
    )
    return out


def _read(path: Path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {
        t.name: np.array(t.data).reshape(tuple(reversed([int(x) for x in t.shape])))
        for t in r.tensors
    }
    return fields, tensors


def test_export_writes_llama_cpp_adapter_layout(train_tiny_base, train_tiny_adapter, tmp_path):
    from safetensors.numpy import load_file

    info = export_gguf(train_tiny_adapter, train_tiny_base, tmp_path / "a.gguf")
    fields, tensors = _read(tmp_path / "a.gguf")
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.lora.alpha"] == pytest.approx(16.0)
    assert info.tensors == len(tensors) == 2 * 2 * 5 and info.rank == 8 and info.scale == 2.0
    peft = load_file(str(train_tiny_adapter / "adapter_model.safetensors"))
    pre = "base_model.model.model.layers.1."
    a_v = tensors["blk.1.attn_v.weight.lora_a"]
    b_v = tensors["blk.1.attn_v.weight.lora_b"]
    # numpy (r, n_in) and (n_out, r): PEFT's A and B untransposed.
    assert np.array_equal(a_v, peft[pre + "self_attn.v_proj.lora_A.weight"])
    assert np.array_equal(b_v, peft[pre + "self_attn.v_proj.lora_B.weight"])
    assert np.array_equal(
        tensors["blk.1.ffn_down.weight.lora_b"], peft[pre + "mlp.down_proj.lora_B.weight"]
    )
    assert tensors["blk.0.attn_q.weight.lora_a"].dtype == np.float32


def test_export_permutes_q_and_k_lora_b_for_llama_only(
    train_tiny_base, train_tiny_adapter, tmp_path
):
    from dataclasses import replace

    from safetensors.numpy import load_file

    peft = load_file(str(train_tiny_adapter / "adapter_model.safetensors"))
    pre = "base_model.model.model.layers.0.self_attn."
    export_gguf(train_tiny_adapter, train_tiny_base, tmp_path / "llama.gguf")
    _, t = _read(tmp_path / "llama.gguf")
    b_q, b_k = peft[pre + "q_proj.lora_B.weight"], peft[pre + "k_proj.lora_B.weight"]
    assert np.array_equal(t["blk.0.attn_q.weight.lora_b"], permute_rows(b_q, 4))
    assert np.array_equal(t["blk.0.attn_k.weight.lora_b"], permute_rows(b_k, 2))
    assert not np.array_equal(permute_rows(b_q, 4), b_q)
    # lora_a indexes input columns: never permuted.
    assert np.array_equal(t["blk.0.attn_q.weight.lora_a"], peft[pre + "q_proj.lora_A.weight"])
    # The same tensors for a qwen2 base are written as they are.
    export_gguf(
        train_tiny_adapter, replace(train_tiny_base, architecture="qwen2"), tmp_path / "q.gguf"
    )
    _, tq = _read(tmp_path / "q.gguf")
    assert np.array_equal(tq["blk.0.attn_q.weight.lora_b"], b_q)


def test_permute_rows_matches_transformers_reverse_permute():
    # transformers un-permutes q/k when reading a llama GGUF; our permute must be its inverse.
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    proc = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    assert np.array_equal(proc._reverse_permute_weights(permute_rows(w, 4), 4, 4), w)
    assert np.array_equal(proc._reverse_permute_weights(permute_rows(w, 2), 4, 2), w)


@pytest.mark.parametrize(
    "cfg,alpha",
    [
        ({"r": 8, "lora_alpha": 16}, 16.0),
        ({"r": 16, "lora_alpha": 16, "use_rslora": True}, 64.0),  # 16*sqrt(16): 64/16 = 16/4
    ],
)
def test_gguf_alpha_reproduces_peft_scaling(cfg, alpha):
    written, rank = gguf_alpha(cfg)
    assert written == pytest.approx(alpha)
    peft_scaling = cfg["lora_alpha"] / (math.sqrt(rank) if cfg.get("use_rslora") else rank)
    assert written / rank == pytest.approx(peft_scaling)


def test_gguf_alpha_refuses_per_module_patterns():
    with pytest.raises(UnsupportedSetting):
        gguf_alpha({"r": 8, "lora_alpha": 16, "alpha_pattern": {"q_proj": 32}})


# --- base cache / parity maths ---------------------------------------------------------------


def test_given_unsupported_architecture_gguf_then_refused_before_conversion(tmp_path):
    path = tmp_path / "bert.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitecture, match="bert"):
        load_base(path, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_sha256_is_remembered_by_size_and_mtime(tmp_path):
    import hashlib
    import os

    f = tmp_path / "m.bin"
    f.write_bytes(b"abc")
    digest = file_sha256(f, tmp_path / "idx")
    assert digest == hashlib.sha256(b"abc").hexdigest()
    assert len(json.loads((tmp_path / "idx" / "sha256-index.json").read_text())) == 1
    # Same size and mtime: the remembered value is used (proved by changing content in place).
    st = f.stat()
    f.write_bytes(b"xyz")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_sha256(f, tmp_path / "idx") == digest
    f.write_bytes(b"abcd")
    assert file_sha256(f, tmp_path / "idx") == hashlib.sha256(b"abcd").hexdigest()


def _logsoftmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_compare_passes_same_effect_and_fails_scaled_or_flipped_effect():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 300)) * 3
    effect = rng.normal(size=(12, 300)) * 2
    noise = rng.normal(size=(12, 300)) * 0.02
    hb, ha = _logsoftmax(base), _logsoftmax(base + effect)
    cb, ca = _logsoftmax(base + noise), _logsoftmax(base + noise + effect)
    assert compare(hb, ha, cb, ca).passed
    assert not compare(hb, ha, cb, _logsoftmax(base + noise + 2 * effect)).passed
    assert not compare(hb, ha, cb, _logsoftmax(base + noise - effect)).passed
    assert not compare(hb, ha, cb, ca, tokens_match=False).passed


def test_compare_holds_a_weak_adapter_to_the_kl_bound_not_the_strong_correlation_bar():
    # Regression: a 2-step adapter (kl_effect ~1 nat) failed parity at delta_corr 0.96 < 0.98
    # although its exported file was correct; weak effects sit closer to the runtime noise.
    rng = np.random.default_rng(1)
    base = rng.normal(size=(12, 300)) * 3
    effect = rng.normal(size=(12, 300)) * 0.8
    noise_hf, noise_cpp = (rng.normal(size=(12, 300)) * 0.15 for _ in range(2))
    hb, ha = _logsoftmax(base), _logsoftmax(base + effect + noise_hf)
    cb, ca = _logsoftmax(base + noise_cpp), _logsoftmax(base + noise_cpp + effect)
    res = compare(hb, ha, cb, ca)
    assert P.NOISE_EFFECT < res.kl_effect < P.STRONG_EFFECT
    assert res.delta_corr < P.MIN_DELTA_CORR
    assert res.passed, res.reasons
    # The same weak effect exported with the wrong sign still fails.
    assert not compare(hb, ha, cb, _logsoftmax(base + noise_cpp - effect)).passed
