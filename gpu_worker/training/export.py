"""PEFT LoRA adapter -> GGUF LoRA adapter that llama.cpp loads (llama_adapter_lora_init).

What llama.cpp expects (src/llama-adapter.cpp, convert_lora_to_gguf.py):

* header: general.type = "adapter", adapter.type = "lora", general.architecture equal to the
  base model's, adapter.lora.alpha (float32);
* for each adapted base tensor ``<name>.weight`` a pair ``<name>.weight.lora_a`` /
  ``<name>.weight.lora_b``; with ggml's reversed dimension order, lora_a has ne = [n_in, r]
  and lora_b ne = [r, n_out], i.e. numpy shapes (r, n_in) and (n_out, r): exactly PEFT's
  lora_A.weight and lora_B.weight, untransposed;
* the delta applied is ``scale * B @ A`` with scale = adapter_scale * alpha / r, r read from
  lora_b. PEFT's scaling is alpha / r, or alpha / sqrt(r) with rsLoRA; for the latter the
  header therefore carries alpha * sqrt(r).

For the "llama" architecture (which includes Mistral-family GGUFs) the converter stores
attn_q / attn_k rows permuted for llama.cpp's RoPE layout, and transformers un-permutes them
when it reads the GGUF. The LoRA delta must live in the same row order as the base weight, so
lora_b of q and k is permuted the same way (lora_a indexes input columns and is untouched).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import UnsupportedArchitecture, UnsupportedSetting

# GGUF architectures whose q/k rows are permuted by llama.cpp's converter. This is exactly the
# set whose q/k transformers reverse-permutes on load (LlamaTensorProcessor, keyed "llama").
PERMUTED_QK_ARCHS = frozenset({"llama"})

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


class BaseInfo(Protocol):
    """What export needs from the base: LoadedBase and base_cache.GGUFBaseInfo both fit."""

    architecture: str
    n_layers: int
    n_head: int
    n_head_kv: int


@dataclass(frozen=True)
class ExportInfo:
    tensors: int  # GGUF tensors written (2 per adapted weight)
    alpha_written: float  # adapter.lora.alpha in the header
    rank: int
    size: int  # bytes
    sha256: str
    architecture: str
    scale: float  # alpha_written / rank: what llama.cpp multiplies B @ A by at scale 1.0


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp converter's q/k row permutation (HF rotate-half -> interleaved pairs)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _model_arch(arch: str) -> Any:
    import gguf

    by_name = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        raise UnsupportedArchitecture(f"gguf package has no architecture named {arch!r}")
    return by_name[arch]


def load_peft_pairs(peft_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """(adapter_config, {module path: {"A": array, "B": array}}) from a PEFT directory."""
    from safetensors.numpy import load_file

    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise UnsupportedSetting(
                f"adapter tensor {key!r} is not a LoRA A/B matrix (embeddings, lm_head and "
                "modules_to_save cannot be exported)"
            )
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise UnsupportedSetting(f"{module}: LoRA pair incomplete ({sorted(ab)})")
    return cfg, pairs


def gguf_alpha(cfg: dict[str, Any]) -> tuple[float, int]:
    """(alpha to write, rank) such that llama.cpp's alpha / rank equals PEFT's scaling."""
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        # llama.cpp has one alpha per adapter and derives rank per tensor, so per-module alpha
        # overrides would be silently wrong.
        raise UnsupportedSetting("rank_pattern / alpha_pattern adapters cannot be exported")
    rank = int(cfg["r"])
    alpha = float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)
    return alpha, rank


def lora_tensors(peft_dir: Path, base: BaseInfo) -> tuple[float, int, list[tuple[str, np.ndarray]]]:
    """(alpha to write, rank, [(gguf tensor name, float32 array)]) for a PEFT directory."""
    import gguf

    arch = base.architecture
    name_map = gguf.get_tensor_name_map(_model_arch(arch), base.n_layers)
    cfg, pairs = load_peft_pairs(Path(peft_dir))
    alpha, rank = gguf_alpha(cfg)
    out: list[tuple[str, np.ndarray]] = []
    for module in sorted(pairs, key=_natural_key):
        a = np.ascontiguousarray(pairs[module]["A"], dtype=np.float32)
        b = np.ascontiguousarray(pairs[module]["B"], dtype=np.float32)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise UnsupportedSetting(f"{module}: unexpected LoRA shapes A{a.shape} B{b.shape}")
        gguf_name = name_map.get_name(module)
        if gguf_name is None:
            raise UnsupportedSetting(f"{module}: no GGUF tensor name for architecture {arch}")
        if arch in PERMUTED_QK_ARCHS:
            if gguf_name.endswith(".attn_q"):
                b = permute_rows(b, base.n_head)
            elif gguf_name.endswith(".attn_k"):
                b = permute_rows(b, base.n_head_kv)
        out.append((f"{gguf_name}.weight.lora_a", a))
        out.append((f"{gguf_name}.weight.lora_b", np.ascontiguousarray(b)))
    return alpha, rank, out


def write_lora_gguf(
    out_path: Path, architecture: str, alpha: float, tensors: list[tuple[str, np.ndarray]]
) -> tuple[int, str]:
    """Write a GGUF LoRA adapter file (atomically); returns (size, sha256)."""
    import gguf

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name, arr in tensors:
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    h = hashlib.sha256()
    with out_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return out_path.stat().st_size, h.hexdigest()


def export_gguf(peft_dir: Path, base: BaseInfo, out_path: Path) -> ExportInfo:
    """Write ``out_path`` (a GGUF LoRA adapter for ``base``) from the PEFT files in ``peft_dir``."""
    alpha, rank, tensors = lora_tensors(peft_dir, base)
    size, sha = write_lora_gguf(out_path, base.architecture, alpha, tensors)
    return ExportInfo(
        tensors=len(tensors),
        alpha_written=alpha,
        rank=rank,
        size=size,
        sha256=sha,
        architecture=base.architecture,
        scale=alpha / rank,
    )


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
