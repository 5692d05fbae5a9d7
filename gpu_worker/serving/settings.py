"""Configuration of the serving worker process (environment prefix `LORA_WORKER_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Everything the serving process reads from its environment, validated once at start."""

    model_config = SettingsConfigDict(env_prefix="LORA_WORKER_", extra="ignore")

    model_path: str = Field(
        min_length=1,
        description="Base model GGUF file: a local path, or an s3:// URI downloaded once into "
        "data_dir/models; loaded once at start.",
    )
    model_id: str = Field(
        min_length=1,
        description=(
            "Id under which the API side registered this base model; a generate naming "
            "another model is refused with 409."
        ),
    )
    n_ctx: int = Field(
        default=2048,
        ge=64,
        le=131072,
        description="Context window in tokens (prompt plus completion) of the llama.cpp context.",
    )
    n_threads: int = Field(
        default=2,
        ge=1,
        le=256,
        description="CPU threads llama.cpp uses for decoding.",
    )
    n_batch: int = Field(
        default=512,
        ge=1,
        le=8192,
        description="Logical batch size in tokens for prompt evaluation.",
    )
    n_gpu_layers: int = Field(
        default=0,
        ge=-1,
        description=(
            "Layers offloaded to the GPU (-1 = all). 0 on CPU-only builds of llama-cpp-python."
        ),
    )
    max_adapters: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Most LoRA adapters kept loaded at once; the least recently used is evicted.",
    )
    max_adapter_mb: float = Field(
        default=512.0,
        gt=0,
        description=(
            "Memory budget in MiB for all loaded adapters together (measured by adapter file "
            "size); the least recently used adapters are evicted to stay under it."
        ),
    )
    data_dir: Path = Field(
        default=Path(".data/worker/adapters"),
        description="Local directory caching downloaded adapter GGUF files, named by sha256.",
    )
    bucket_name: str = Field(
        min_length=1,
        description="S3 bucket holding adapter files (AdapterRef.gguf_key is a key in it).",
    )
    host: str = Field(default="127.0.0.1", description="Interface the HTTP server binds to.")
    port: int = Field(default=8081, ge=1, le=65535, description="TCP port of the HTTP server.")
