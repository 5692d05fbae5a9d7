"""Load a GGUF base model for training, converting it once and caching the result.

transformers can read a GGUF directly (it dequantizes every tensor to float), but the first
load is slow, mostly because the tokenizer is rebuilt from the GGUF vocabulary. The converted
model and tokenizer are therefore saved under ``cache_dir/<sha256 of the GGUF>/`` and later
loads read that directory. The sha256 of a 250 MB file costs about a second, so it is itself
remembered in a small index keyed by path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UnsupportedArchitecture

log = logging.getLogger(__name__)

# GGUF `general.architecture` values this worker knows how to export. What is actually
# supported is this set intersected with what the installed transformers can read from GGUF
# (transformers 5 has no GGUF loader for "gemma" v1, so that one is refused at runtime).
CANDIDATE_ARCHITECTURES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"}
)


def supported_architectures() -> frozenset[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return CANDIDATE_ARCHITECTURES & frozenset(GGUF_CONFIG_MAPPING)


# PEFT injects LoRA layers into the model object in place, so two trainings (or a training and a
# parity check) on the same LoadedBase must not overlap. One process trains one job at a time;
# the lock makes overlapping calls wait instead of corrupting each other.
BASE_MODEL_LOCK = threading.RLock()

_CACHE_FORMAT = 1
_META_FILE = "lora_worker_meta.json"
_HASH_INDEX = "sha256-index.json"


@dataclass(frozen=True)
class LoadedBase:
    """A base model ready for LoRA training. Never modified by training (see trainer)."""

    model: Any  # transformers PreTrainedModel, float32, eval mode
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    architecture: str  # GGUF general.architecture, e.g. "gemma3"
    sha256: str
    n_layers: int
    n_head: int
    n_head_kv: int
    add_bos: bool  # whether llama.cpp prepends BOS when tokenizing (tokenizer.ggml.add_bos_token)
    gguf_path: Path
    load_seconds: float = 0.0
    from_cache: bool = False


@dataclass(frozen=True)
class GGUFBaseInfo:
    architecture: str
    n_layers: int
    n_head: int
    n_head_kv: int
    add_bos: bool


def read_gguf_info(gguf_path: Path) -> GGUFBaseInfo:
    """Read the few header fields training and export need (memory-mapped, cheap)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))

    def value(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    arch = value("general.architecture")
    if not isinstance(arch, str):
        raise UnsupportedArchitecture(f"{gguf_path.name}: no general.architecture in header")
    n_layers = int(value(f"{arch}.block_count", 0))
    n_head = value(f"{arch}.attention.head_count", 0)
    n_head_kv = value(f"{arch}.attention.head_count_kv", n_head)
    # Per-layer head counts are stored as arrays in some models; training code needs one value.
    n_head = int(n_head[0] if isinstance(n_head, list) else n_head)
    n_head_kv = int(n_head_kv[0] if isinstance(n_head_kv, list) else n_head_kv)
    add_bos = value("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        # llama.cpp's default for SentencePiece ("llama") vocabularies is to add BOS.
        add_bos = value("tokenizer.ggml.model") == "llama"
    return GGUFBaseInfo(arch, n_layers, n_head, n_head_kv, bool(add_bos))


def file_sha256(path: Path, index_dir: Path | None = None) -> str:
    """sha256 of a file, remembered in ``index_dir`` by (path, size, mtime_ns)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index_path = index_dir / _HASH_INDEX if index_dir else None
    index: dict[str, str] = {}
    if index_path and index_path.exists():
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        if key in index:
            return index[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if index_path:
        index[key] = digest
        _atomic_write_text(index_path, json.dumps(index, indent=0, sort_keys=True))
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_base(gguf_path: Path, cache_dir: Path, device: str | None = None) -> LoadedBase:
    """Load ``gguf_path`` as a float32 transformers model plus tokenizer, cached by sha256.

    ``device`` defaults to "cuda" when available, else "cpu". Raises UnsupportedArchitecture
    before any heavy work when the GGUF is not one we train.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    cache_dir = Path(cache_dir)
    info = read_gguf_info(gguf_path)
    supported = supported_architectures()
    if info.architecture not in supported:
        raise UnsupportedArchitecture(
            f"architecture {info.architecture!r} is not supported for training; supported: "
            f"{', '.join(sorted(supported))}"
        )
    t0 = time.perf_counter()
    sha = file_sha256(gguf_path, cache_dir)
    target = cache_dir / sha
    from_cache = _cache_complete(target)
    if not from_cache:
        _convert_into(gguf_path, target, info)

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(target)
    model.eval()
    model.requires_grad_(False)
    # Eager attention: identical numbers across runs and no sdpa/padding surprises on CPU.
    _set_attn_eager(model)
    seconds = time.perf_counter() - t0
    log.info(
        "base %s (%s) loaded in %.1fs (%s)",
        gguf_path.name,
        info.architecture,
        seconds,
        "cache" if from_cache else "converted",
    )
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        architecture=info.architecture,
        sha256=sha,
        n_layers=info.n_layers,
        n_head=info.n_head,
        n_head_kv=info.n_head_kv,
        add_bos=info.add_bos,
        gguf_path=gguf_path,
        load_seconds=seconds,
        from_cache=from_cache,
    )


def _set_attn_eager(model: Any) -> None:
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        model.config._attn_implementation = "eager"


def _cache_complete(target: Path) -> bool:
    meta = target / _META_FILE
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == _CACHE_FORMAT
    except (OSError, ValueError):
        return False


def _forget_gguf_quantizer(model: Any) -> None:
    """The GGUF loader marks the model as "quantized with gguf" although every tensor is already
    dequantized to float; save_pretrained refuses such a model. Drop the marker so the float
    weights are saved (and reloaded) as an ordinary checkpoint."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _convert_into(gguf_path: Path, target: Path, info: GGUFBaseInfo) -> None:
    """Convert from GGUF into a temp dir next to ``target``, then rename it into place.

    Two processes converting the same file at once both do the work; the first rename wins and
    the loser discards its copy, so a reader never sees a half-written directory.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except ValueError as e:  # transformers: "GGUF model with architecture X is not supported"
        raise UnsupportedArchitecture(f"transformers cannot load {gguf_path.name}: {e}") from e
    _forget_gguf_quantizer(model)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "format": _CACHE_FORMAT,
            "source": gguf_path.name,
            "architecture": info.architecture,
            "convert_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_complete(target):
                # A stale, incomplete directory from a crash: replace it.
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1fs", gguf_path.name, time.perf_counter() - t0)
