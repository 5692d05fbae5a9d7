"""The llama.cpp engine on the real base model (Gemma 3 270M) with real GGUF LoRA adapters."""

from __future__ import annotations

import pytest

from gpu_worker.serving.contracts import AdapterKey
from gpu_worker.serving.errors import (
    AdapterInvalidError,
    AdapterNotLoadedError,
    AdapterTooLargeError,
    PromptTooLongError,
)

pytestmark = pytest.mark.e2e

PROMPT = "The capital of France is"
OTHER_PROMPT = "Water boils at"
TOKENS = 16

A = AdapterKey("tenant-1", "adapter-a", "v1.0")
B = AdapterKey("tenant-1", "adapter-b", "v1.0")
C = AdapterKey("tenant-2", "adapter-c", "v1.0")


def greedy(engine, key=None, prompt=PROMPT):
    return engine.generate(prompt, key, max_tokens=TOKENS, temperature=0.0).text


@pytest.fixture(scope="module")
def cold(serve_model_path, serve_lora_files, serve_engine_kwargs):
    """Reference outputs, each from its own freshly loaded engine (nothing ran before)."""
    from gpu_worker.serving.engine import Engine

    out = {}
    for name in (None, "a", "b"):
        engine = Engine(serve_model_path, **serve_engine_kwargs)
        try:
            key = None
            if name is not None:
                key = AdapterKey("cold", name, "v1.0")
                engine.load_adapter(key, serve_lora_files[name])
            out[name] = greedy(engine, key)
        finally:
            engine.close()
    return out


def test_given_two_adapters_when_greedy_then_each_differs_from_base_and_from_each_other(cold):
    assert cold["a"] != cold[None]
    assert cold["b"] != cold[None]
    assert cold["a"] != cold["b"]


def test_given_adapter_a_ran_when_b_runs_same_prompt_then_output_equals_cold_b(
    serve_engine, serve_lora_files, cold
):
    # Regression guard: the high-level Llama reuses a matching prompt prefix from its KV
    # cache; without the per-request clear, B would continue from A's cached prompt state.
    serve_engine.load_adapter(A, serve_lora_files["a"])
    serve_engine.load_adapter(B, serve_lora_files["b"])
    assert greedy(serve_engine, A) == cold["a"]
    assert greedy(serve_engine, B) == cold["b"]
    assert greedy(serve_engine, A) == cold["a"]


def test_given_adapter_ran_when_no_adapter_then_output_equals_bare_base(
    serve_engine, serve_lora_files, cold
):
    serve_engine.load_adapter(A, serve_lora_files["a"])
    assert greedy(serve_engine, A) == cold["a"]
    assert greedy(serve_engine) == cold[None]
    # and again after the adapter ran on a different prompt
    greedy(serve_engine, A, prompt=OTHER_PROMPT)
    assert greedy(serve_engine) == cold[None]


def test_given_scale_zero_when_generating_then_output_equals_base(
    serve_engine, serve_lora_files, cold
):
    serve_engine.load_adapter(A, serve_lora_files["a"])
    result = serve_engine.generate(PROMPT, A, max_tokens=TOKENS, temperature=0.0, adapter_scale=0.0)
    assert result.text == cold[None]


def test_when_sampling_with_a_seed_then_the_seed_decides_the_output(serve_engine):
    def sample(seed):
        return serve_engine.generate(
            OTHER_PROMPT, None, max_tokens=TOKENS, temperature=1.0, top_p=0.95, seed=seed
        ).text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_when_stop_sequence_appears_then_text_ends_before_it(serve_engine, cold):
    stop = "."
    assert stop in cold[None]
    result = serve_engine.generate(PROMPT, None, max_tokens=TOKENS, temperature=0.0, stop=[stop])
    assert result.text == cold[None].split(stop)[0]
    assert result.finish_reason == "stop"


def test_generate_reports_token_counts_and_time(serve_engine):
    result = serve_engine.generate(PROMPT, None, max_tokens=8, temperature=0.0)
    assert result.prompt_tokens >= 5  # BOS + the prompt's words
    assert result.completion_tokens == 8
    assert result.inference_time_ms > 0
    assert result.adapter_cache_hit is None


def test_when_adapter_not_loaded_then_generate_raises_typed_error(serve_engine):
    missing = AdapterKey("tenant-9", "never-loaded", "v1.0")
    with pytest.raises(AdapterNotLoadedError):
        serve_engine.generate(PROMPT, missing, max_tokens=4)


def test_when_prompt_exceeds_context_then_typed_error(serve_engine):
    with pytest.raises(PromptTooLongError):
        serve_engine.generate("word " * 1000, None, max_tokens=4)


@pytest.mark.parametrize("name", ["wrong_arch", "bad_shape"])
def test_when_adapter_file_is_unusable_then_load_is_refused(
    serve_engine_factory, serve_lora_files, name
):
    engine = serve_engine_factory()
    with pytest.raises(AdapterInvalidError):
        engine.load_adapter(A, serve_lora_files[name])
    assert engine.stats().loaded_adapters == 0


def test_when_file_is_not_gguf_then_load_is_refused(serve_engine_factory, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    engine = serve_engine_factory()
    with pytest.raises(AdapterInvalidError):
        engine.load_adapter(A, junk)


def test_lru_eviction_by_count_drops_least_recently_used(serve_engine_factory, serve_lora_files):
    engine = serve_engine_factory(max_adapters=2)
    engine.load_adapter(A, serve_lora_files["a"])
    engine.load_adapter(B, serve_lora_files["b"])
    engine.load_adapter(A, serve_lora_files["a"])  # hit: A becomes most recently used
    engine.load_adapter(C, serve_lora_files["c"])
    assert engine.loaded_keys() == [A, C]
    assert engine.adapter_status(B).is_loaded is False
    assert engine.stats().loaded_adapters == 2


def test_lru_eviction_by_memory_keeps_total_under_budget(serve_engine_factory, serve_lora_files):
    sizes = {n: serve_lora_files[n].stat().st_size / 2**20 for n in ("a", "b", "small")}
    budget = sizes["a"] + sizes["b"] + sizes["small"] / 2  # a+b fit, a+b+small does not
    engine = serve_engine_factory(max_adapters=8, max_adapter_mb=budget)
    small = AdapterKey("tenant-1", "small", "v1.0")
    engine.load_adapter(A, serve_lora_files["a"])
    engine.load_adapter(B, serve_lora_files["b"])
    engine.load_adapter(small, serve_lora_files["small"])
    assert engine.loaded_keys() == [B, small]
    assert engine.stats().memory_usage_mb == pytest.approx(sizes["b"] + sizes["small"])
    assert engine.stats().memory_usage_mb <= budget


def test_adapter_larger_than_budget_is_refused(serve_engine_factory, serve_lora_files):
    engine = serve_engine_factory(max_adapter_mb=0.5)
    with pytest.raises(AdapterTooLargeError):
        engine.load_adapter(A, serve_lora_files["large"])


def test_evicting_the_active_adapter_detaches_it_first(
    serve_engine_factory, serve_lora_files, cold
):
    engine = serve_engine_factory(max_adapters=1)
    engine.load_adapter(A, serve_lora_files["a"])
    assert greedy(engine, A) == cold["a"]  # A is now attached to the context
    engine.load_adapter(B, serve_lora_files["b"])  # evicts (and frees) A
    with pytest.raises(AdapterNotLoadedError):
        engine.generate(PROMPT, A, max_tokens=4)
    assert greedy(engine, B) == cold["b"]
    assert greedy(engine) == cold[None]


def test_unload_frees_the_adapter(serve_engine_factory, serve_lora_files):
    engine = serve_engine_factory()
    engine.load_adapter(A, serve_lora_files["a"])
    greedy(engine, A)
    assert engine.unload_adapter(A) is True
    assert engine.adapter_status(A) == (False, 0.0, None)
    assert engine.stats().loaded_adapters == 0
    assert engine.stats().memory_usage_mb == 0.0
    with pytest.raises(AdapterNotLoadedError):
        engine.generate(PROMPT, A, max_tokens=4)
    assert engine.unload_adapter(A) is False


def test_stats_count_hits_misses_inferences_and_memory(serve_engine_factory, serve_lora_files):
    engine = serve_engine_factory()
    assert engine.stats().total_inferences == 0
    first = engine.load_adapter(A, serve_lora_files["a"])
    again = engine.load_adapter(A, serve_lora_files["a"])
    engine.load_adapter(B, serve_lora_files["b"])
    engine.generate(PROMPT, A, max_tokens=2)
    engine.generate(PROMPT, None, max_tokens=2)
    stats = engine.stats()
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert first.memory_usage_mb == pytest.approx(serve_lora_files["a"].stat().st_size / 2**20)
    assert stats.loaded_adapters == 2
    assert stats.cache_hits == 1
    assert stats.cache_misses == 2
    assert stats.total_inferences == 2
    assert stats.avg_load_time_ms > 0
    assert stats.uptime_seconds > 0
    expected_mb = sum(serve_lora_files[n].stat().st_size for n in ("a", "b")) / 2**20
    assert stats.memory_usage_mb == pytest.approx(expected_mb)
    is_loaded, memory_mb, last_used = engine.adapter_status(A)
    assert is_loaded and memory_mb > 0 and last_used is not None


def test_same_key_with_a_different_file_is_reloaded(serve_engine_factory, serve_lora_files, cold):
    engine = serve_engine_factory()
    engine.load_adapter(A, serve_lora_files["a"])
    result = engine.load_adapter(A, serve_lora_files["b"])
    assert result.cache_hit is False
    assert engine.stats().loaded_adapters == 1
    assert greedy(engine, A) == cold["b"]
