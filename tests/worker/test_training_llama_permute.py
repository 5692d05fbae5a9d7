"""The q/k permutation of the "llama" architecture, checked against llama.cpp itself.

Gemma 3 (the real base model) has no q/k permutation, so its end-to-end parity cannot tell a
missing one. Here a tiny random Llama is written as a float32 GGUF the way llama.cpp's
converter writes it (q/k rows permuted for llama.cpp's RoPE layout), so llama.cpp and
transformers compute the same base model to float precision; an adapter trained with PEFT
must then match through llama.cpp only if its lora_b of q/k is permuted the same way.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from gpu_worker.training import parity as P
from gpu_worker.training.base_cache import LoadedBase
from gpu_worker.training.export import export_gguf, lora_tensors, permute_rows, write_lora_gguf
from gpu_worker.training.trainer import TrainConfig, train_lora

pytestmark = pytest.mark.e2e

VOCAB = 260  # 0 unk, 1 bos, 2 eos, 3..258 bytes, 259 a plain piece


class ByteTokenizer:
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    bos_token = "<s>"
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [b + 3 for b in text.encode("utf-8")]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        initializer_range=0.2,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


def _write_llama_gguf(model, path: Path) -> None:
    """A float32 llama GGUF in llama.cpp's converter layout (q/k rows permuted)."""
    cfg = model.config
    sd = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + ["\u2581a"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(
            f"blk.{i}.attn_q.weight",
            permute_rows(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads),
        )
        w.add_tensor(
            f"blk.{i}.attn_k.weight",
            permute_rows(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads),
        )
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def train_tiny_llama(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tiny_llama")
    model = _tiny_llama()
    _write_llama_gguf(model, out / "base.gguf")
    base = LoadedBase(
        model=model,
        tokenizer=ByteTokenizer(),
        architecture="llama",
        sha256="0" * 64,
        n_layers=2,
        n_head=4,
        n_head_kv=2,
        add_bos=True,
        gguf_path=out / "base.gguf",
    )
    records = [{"prompt": f"item {i} code:", "completion": f" {i * 37 % 100} ok"} for i in range(8)]
    cfg = TrainConfig(epochs=4, batch_size=4, learning_rate=3e-2, validation_split=0.0, seed=3)
    train_lora(base, records, cfg, out / "peft")
    ids = [1] + [b + 3 for b in b"item 3 code: 11 ok, item 5 code: 85 ok"]
    hb, ha = P.hf_logprobs(base, out / "peft", ids)
    cb = P.llama_logprobs(out / "base.gguf", None, ids, n_threads=1)
    return {"dir": out, "base": base, "ids": ids, "hb": hb, "ha": ha, "cb": cb}


def test_tiny_llama_base_matches_llama_cpp(train_tiny_llama):
    t = train_tiny_llama
    # Float32 on both sides: the converter layout (with its permutation) is right.
    assert P._kl(t["hb"], t["cb"]) < 1e-4
    assert np.array_equal(t["hb"].argmax(-1), t["cb"].argmax(-1))


def test_llama_export_with_permuted_qk_matches_and_without_it_fails(train_tiny_llama):
    t = train_tiny_llama
    good = t["dir"] / "good.gguf"
    export_gguf(t["dir"] / "peft", t["base"], good)
    ca = P.llama_logprobs(t["dir"] / "base.gguf", good, t["ids"], n_threads=1)
    res = P.compare(t["hb"], t["ha"], t["cb"], ca)
    print(f"\ntiny llama good: {res.to_dict()}")
    assert res.passed and res.kl_effect > 0.05 and res.kl_adapted < 1e-3

    # The same adapter with q/k lora_b left in HF row order (the bug the permutation prevents).
    alpha, _, tensors = lora_tensors(t["dir"] / "peft", t["base"])
    undone = []
    for name, arr in tensors:
        if name.endswith("attn_q.weight.lora_b") or name.endswith("attn_k.weight.lora_b"):
            n_head = 4 if ".attn_q." in name else 2
            # permute_rows is an involution only for 2-row groups; invert it explicitly.
            rows = arr.shape[0]
            arr = arr.reshape(n_head, rows // n_head // 2, 2, -1).swapaxes(1, 2).reshape(arr.shape)
        undone.append((name, arr))
    bad = t["dir"] / "unpermuted.gguf"
    write_lora_gguf(bad, "llama", alpha, undone)
    cb_bad = P.llama_logprobs(t["dir"] / "base.gguf", bad, t["ids"], n_threads=1)
    res_bad = P.compare(t["hb"], t["ha"], t["cb"], cb_bad)
    print(f"tiny llama unpermuted: {res_bad.to_dict()}")
    assert not res_bad.passed
