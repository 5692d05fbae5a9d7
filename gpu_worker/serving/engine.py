"""One base model, one llama.cpp context, many LoRA adapters switched per request.

The base model is loaded once per process. Adapters are loaded with llama.cpp's own adapter
API (`llama_adapter_lora_init`) into an LRU bounded by count and by memory, keyed by
(tenant, adapter_id, version), and attached to the single context per request with
`llama_set_adapters_lora`; the model is never reloaded to change adapters.

Isolation: the KV memory and the high-level `Llama` object's prefix-reuse state are cleared
before every request. A cache entry built under adapter A holds keys/values computed with A's
weights, so reusing it for adapter B (or for the bare base) would silently mix the two. The
clear itself costs about a millisecond at n_ctx 2048 (`python -m gpu_worker.serving.bench`);
what it gives up is prompt-prefix reuse between consecutive requests, which for short
prompts is a few tens of milliseconds of prompt evaluation.

Requests are serialized by one lock because there is one context.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
from llama_cpp import Llama

from gpu_worker.serving.contracts import (
    AdapterKey,
    AdapterStatus,
    EngineStats,
    GenerateResult,
    LoadResult,
)
from gpu_worker.serving.errors import (
    AdapterInvalidError,
    AdapterNotLoadedError,
    AdapterTooLargeError,
    InvalidRequestError,
    PromptTooLongError,
)

_MB = 1024 * 1024
# llama.cpp treats 0xFFFFFFFF as "pick a random seed"; a request seed is kept below it.
_MAX_SEED = 2**32 - 2
# What is attached to the context is unknown (a set call failed): detach before any free.
_UNKNOWN = (-1, 0.0)


@dataclass
class _LoadedAdapter:
    handle: Any  # llama_adapter_lora_p
    path: str
    size_bytes: int
    load_time_ms: float
    loaded_at: datetime
    last_used: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def memory_mb(self) -> float:
        return self.size_bytes / _MB


class Engine:
    """The serving engine: a llama.cpp base model plus an LRU of LoRA adapters.

    Memory of an adapter is measured by its GGUF file size, which is its tensor bytes plus a
    small header (llama.cpp copies exactly those tensors into its adapter buffers).
    `stats().memory_usage_mb` is the memory of the loaded adapters, the quantity the cache
    bounds; the base model's own footprint is fixed for the process.
    """

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 2048,
        n_threads: int = 2,
        n_batch: int = 512,
        max_adapters: int = 8,
        max_adapter_mb: float = 512.0,
        n_gpu_layers: int = 0,
        verbose: bool = False,
    ) -> None:
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        if max_adapter_mb <= 0:
            raise ValueError("max_adapter_mb must be positive")
        self._started = time.monotonic()
        self._max_adapters = max_adapters
        self._max_adapter_bytes = int(max_adapter_mb * _MB)
        self._llm: Llama | None = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_gpu_layers=n_gpu_layers,
            verbose=verbose,
        )
        self._n_ctx = self._llm.n_ctx()
        self._architecture = str(self._llm.metadata.get("general.architecture", ""))

        # _lock serializes everything that touches the llama.cpp model/context (decode,
        # adapter init/attach/free). _meta_lock guards the adapter table and counters for
        # short reads, so stats and status answer while a generate holds _lock. Order:
        # _lock, then _meta_lock.
        self._lock = threading.RLock()
        self._meta_lock = threading.Lock()
        self._adapters: OrderedDict[AdapterKey, _LoadedAdapter] = OrderedDict()
        self._active: tuple[int, float] | None = None  # (adapter address, scale) on the context

        self._cache_hits = 0
        self._cache_misses = 0
        self._total_inferences = 0
        self._load_times_ms: list[float] = []
        # Timings of the most recent generate (benchmarks read these).
        self.last_timings: dict[str, float] = {}

    # -- properties ---------------------------------------------------------------------------

    @property
    def model_loaded(self) -> bool:
        return self._llm is not None

    @property
    def architecture(self) -> str:
        return self._architecture

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    # -- adapters -----------------------------------------------------------------------------

    def load_adapter(self, key: AdapterKey, path: str | Path) -> LoadResult:
        """Make `key` resident; a hit only refreshes its LRU position.

        The same key with a different file (paths are content-addressed by sha256) is treated
        as a miss and replaces the old adapter.
        """
        path = str(path)
        started = time.perf_counter()
        # A hit touches only the table, so it does not wait for a running generate.
        hit = self._touch_if_resident(key, path, started)
        if hit is not None:
            return hit
        with self._lock:
            llm = self._require_model()
            hit = self._touch_if_resident(key, path, started)  # loaded while we waited
            if hit is not None:
                return hit
            with self._meta_lock:
                replaced = key in self._adapters
            if replaced:
                self._drop(key)

            size = self._check_adapter_file(path)
            if size > self._max_adapter_bytes:
                raise AdapterTooLargeError(
                    f"adapter is {size / _MB:.1f} MiB, above the worker's adapter budget of "
                    f"{self._max_adapter_bytes / _MB:.1f} MiB"
                )
            self._evict_for(size)

            load_started = time.perf_counter()
            handle = llama_cpp.llama_adapter_lora_init(llm.model, path.encode("utf-8"))
            if not handle:
                raise AdapterInvalidError(
                    "llama.cpp refused the adapter (tensor names or shapes do not match the "
                    "base model)"
                )
            now = datetime.now(UTC)
            init_ms = (time.perf_counter() - load_started) * 1000
            elapsed = (time.perf_counter() - started) * 1000
            with self._meta_lock:
                self._adapters[key] = _LoadedAdapter(handle, path, size, init_ms, now, now)
                self._cache_misses += 1
                # What /load reports for a miss: checks, eviction and llama.cpp's load.
                self._load_times_ms.append(elapsed)
            return LoadResult(elapsed, size / _MB, False)

    def _touch_if_resident(self, key: AdapterKey, path: str, started: float) -> LoadResult | None:
        with self._meta_lock:
            entry = self._adapters.get(key)
            if entry is None or entry.path != path:
                return None
            entry.last_used = datetime.now(UTC)
            self._adapters.move_to_end(key)
            self._cache_hits += 1
            return LoadResult((time.perf_counter() - started) * 1000, entry.memory_mb, True)

    def unload_adapter(self, key: AdapterKey) -> bool:
        """Free `key`'s adapter; False when it was not loaded."""
        with self._lock:
            with self._meta_lock:
                if key not in self._adapters:
                    return False
            self._drop(key)
            return True

    def adapter_status(self, key: AdapterKey) -> AdapterStatus:
        with self._meta_lock:
            entry = self._adapters.get(key)
            if entry is None:
                return AdapterStatus(False, 0.0, None)
            return AdapterStatus(True, entry.memory_mb, entry.last_used)

    def loaded_keys(self) -> list[AdapterKey]:
        """Loaded adapters, least recently used first."""
        with self._meta_lock:
            return list(self._adapters)

    # -- inference ----------------------------------------------------------------------------

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
    ) -> GenerateResult:
        """Complete `prompt` through the base model, with `adapter_key`'s adapter if given.

        temperature 0 is greedy decoding; otherwise temperature + top-p sampling seeded with
        `seed` (a random seed when None). Raises AdapterNotLoadedError when the adapter is not
        resident: the caller loads it and retries.
        """
        if max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise InvalidRequestError("temperature must be >= 0 and top_p in (0, 1]")
        if seed is None:
            seed = secrets.randbelow(_MAX_SEED + 1)
        elif not 0 <= seed <= _MAX_SEED:
            raise InvalidRequestError(f"seed must be between 0 and {_MAX_SEED}")

        with self._lock:
            llm = self._require_model()
            started = time.perf_counter()
            entry = None
            if adapter_key is not None:
                with self._meta_lock:
                    entry = self._adapters.get(adapter_key)
                if entry is None:
                    raise AdapterNotLoadedError(
                        "adapter is not loaded in this worker", adapter=adapter_key
                    )

            n_prompt = len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
            if n_prompt >= self._n_ctx:
                raise PromptTooLongError(
                    f"prompt is {n_prompt} tokens; the context window is {self._n_ctx}"
                )

            t0 = time.perf_counter()
            self._attach(entry, adapter_scale)
            t1 = time.perf_counter()
            self._clear_state(llm)
            t2 = time.perf_counter()

            out = llm.create_completion(
                prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                # Only temperature and top-p shape sampling: the other samplers of the chain
                # are set to their no-op values so results do not depend on library defaults.
                top_k=0,
                min_p=0.0,
                typical_p=1.0,
                repeat_penalty=1.0,
                frequency_penalty=0.0,
                presence_penalty=0.0,
                stop=list(stop or []),
                seed=seed,
            )
            finished = time.perf_counter()

            if entry is not None:
                with self._meta_lock:
                    entry.last_used = datetime.now(UTC)
                    if adapter_key in self._adapters:
                        self._adapters.move_to_end(adapter_key)
            with self._meta_lock:
                self._total_inferences += 1

            choice = out["choices"][0]
            usage = out["usage"]
            self.last_timings = {
                "switch_ms": (t1 - t0) * 1000,
                "clear_ms": (t2 - t1) * 1000,
                "completion_ms": (finished - t2) * 1000,
                "total_ms": (finished - started) * 1000,
            }
            return GenerateResult(
                text=choice["text"],
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
                inference_time_ms=(finished - started) * 1000,
                adapter_cache_hit=None if adapter_key is None else True,
                finish_reason=str(choice.get("finish_reason") or "length"),
            )

    def stats(self) -> EngineStats:
        with self._meta_lock:
            loads = self._load_times_ms
            return EngineStats(
                loaded_adapters=len(self._adapters),
                cache_hits=self._cache_hits,
                cache_misses=self._cache_misses,
                total_inferences=self._total_inferences,
                avg_load_time_ms=(sum(loads) / len(loads)) if loads else 0.0,
                uptime_seconds=time.monotonic() - self._started,
                memory_usage_mb=sum(e.size_bytes for e in self._adapters.values()) / _MB,
            )

    def close(self) -> None:
        """Free every adapter, then the context and model (adapters must go first)."""
        with self._lock:
            if self._llm is None:
                return
            self._attach(None, 1.0)
            for key in self.loaded_keys():
                self._drop(key)
            self._llm.close()
            self._llm = None

    # -- internals (caller holds self._lock) ---------------------------------------------------

    def _require_model(self) -> Llama:
        if self._llm is None:
            raise RuntimeError("engine is closed")
        return self._llm

    def _attach(self, entry: _LoadedAdapter | None, scale: float) -> None:
        """Put exactly `entry` (or nothing) on the context, skipping the call when unchanged."""
        wanted = None if entry is None else (_address(entry.handle), float(scale))
        if wanted == self._active:
            return
        llm = self._require_model()
        if entry is None:
            rc = llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(entry.handle)
            scales = (ctypes.c_float * 1)(scale)
            rc = llama_cpp.llama_set_adapters_lora(llm.ctx, handles, 1, scales)
        if rc != 0:
            self._active = _UNKNOWN
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc})")
        self._active = wanted

    def _clear_state(self, llm: Llama) -> None:
        # Both the KV memory (llama.cpp) and the token history the high-level object uses
        # for prefix reuse: with n_tokens = 0 nothing from the previous request is reused.
        llm._ctx.kv_cache_clear()  # noqa: SLF001 - the public API has no memory-clear call
        llm.reset()

    def _drop(self, key: AdapterKey) -> None:
        """Detach (if active) and free one adapter."""
        with self._meta_lock:
            entry = self._adapters.pop(key, None)
        if entry is None:
            return
        if self._active is not None and self._active[0] in (_address(entry.handle), -1):
            # Never free an adapter the context still points at.
            self._attach(None, 1.0)
        llama_cpp.llama_adapter_lora_free(entry.handle)

    def _evict_for(self, size: int) -> None:
        """Evict least recently used adapters until one more of `size` bytes fits."""
        while True:
            with self._meta_lock:
                count = len(self._adapters)
                used = sum(e.size_bytes for e in self._adapters.values())
                if count < self._max_adapters and used + size <= self._max_adapter_bytes:
                    return
                victim = next(iter(self._adapters))
            self._drop(victim)

    def _check_adapter_file(self, path: str) -> int:
        """Cheap header checks with clear messages before llama.cpp reads the tensors."""
        try:
            size = os.path.getsize(path)
            reader = gguf.GGUFReader(path)
        except (OSError, ValueError) as err:
            raise AdapterInvalidError("adapter file is not a readable GGUF file") from err
        meta = {}
        for name in ("general.type", "adapter.type", "general.architecture"):
            fld = reader.fields.get(name)
            meta[name] = fld.contents() if fld is not None else None
        if meta["general.type"] != "adapter" or meta["adapter.type"] != "lora":
            raise AdapterInvalidError("file is not a LoRA adapter GGUF")
        if meta["general.architecture"] != self._architecture:
            raise AdapterInvalidError(
                f"adapter architecture {meta['general.architecture']!r} does not match the "
                f"base model's {self._architecture!r}"
            )
        return size


def _address(handle: Any) -> int:
    value = getattr(handle, "value", handle)
    if isinstance(value, int):
        return value
    return ctypes.cast(handle, ctypes.c_void_p).value or 0
