"""Value types shared by the engine and the HTTP layer (no llama.cpp import here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol


class AdapterKey(NamedTuple):
    """Identity of one loaded adapter: versions are immutable, so the version is part of it."""

    tenant: str
    adapter_id: str
    version: str


@dataclass(frozen=True)
class LoadResult:
    load_time_ms: float
    memory_usage_mb: float
    cache_hit: bool


class AdapterStatus(NamedTuple):
    """A tuple, so `is_loaded, memory_mb, last_used = engine.adapter_status(key)` works."""

    is_loaded: bool
    memory_usage_mb: float
    last_used: datetime | None


@dataclass(frozen=True)
class GenerateResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    inference_time_ms: float
    adapter_cache_hit: bool | None
    finish_reason: str = "length"


@dataclass(frozen=True)
class EngineStats:
    loaded_adapters: int
    cache_hits: int
    cache_misses: int
    total_inferences: int
    avg_load_time_ms: float
    uptime_seconds: float
    memory_usage_mb: float


class ServingEngine(Protocol):
    """What the HTTP layer needs from an engine (the llama.cpp Engine, or a test double)."""

    @property
    def model_loaded(self) -> bool: ...

    @property
    def architecture(self) -> str: ...

    @property
    def n_ctx(self) -> int: ...

    def load_adapter(self, key: AdapterKey, path: str) -> LoadResult: ...

    def unload_adapter(self, key: AdapterKey) -> bool: ...

    def adapter_status(self, key: AdapterKey) -> AdapterStatus: ...

    def generate(
        self,
        prompt: str,
        adapter_key: AdapterKey | None = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        adapter_scale: float = 1.0,
    ) -> GenerateResult: ...

    def stats(self) -> EngineStats: ...
