"""Base model files: a registered `gguf_path` is a local path or an s3:// URI; the worker
needs a local file either way (llama.cpp and transformers read from disk)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def local_model_file(uri: str, cache_dir: Path, blobs) -> Path:
    """The local path of `uri`, downloading an s3:// object once into `cache_dir/models`.

    The download goes to a temporary name and is renamed when complete, so a crash never
    leaves a truncated file that looks cached.
    """
    if not uri.startswith("s3://"):
        return Path(uri)
    from lora_common.blobs import parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    local = Path(cache_dir) / "models" / f"{hashlib.sha256(uri.encode()).hexdigest()[:24]}.gguf"
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_suffix(".part")
        blobs.download_file(key, str(part), bucket=bucket)
        part.replace(local)
    return local
