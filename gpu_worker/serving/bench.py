"""Serving micro-benchmarks: adapter switch, cold adapter load, KV clear, tokens per second.

    python -m gpu_worker.serving.bench --model .data/models/gemma-3-270m-q4_k_m.gguf \
        --adapter a.gguf --adapter b.gguf

Prints one JSON object. Numbers are medians over repeats; on a shared CPU they move with load.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from pathlib import Path

import llama_cpp

from gpu_worker.serving.contracts import AdapterKey
from gpu_worker.serving.engine import Engine

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _median_ms(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def run(model: Path, adapters: list[Path], n_ctx: int, n_threads: int, tokens: int) -> dict:
    t0 = time.perf_counter()
    engine = Engine(model, n_ctx=n_ctx, n_threads=n_threads, max_adapters=len(adapters) + 1)
    out: dict = {
        "n_ctx": n_ctx,
        "n_threads": n_threads,
        "model_load_ms": (time.perf_counter() - t0) * 1000,
    }
    llm = engine._llm  # noqa: SLF001 - benchmarks look inside on purpose
    assert llm is not None

    keys = [AdapterKey("bench", p.stem, "v1") for p in adapters]
    cold = []
    for key, path in zip(keys, adapters, strict=True):
        t = time.perf_counter()
        engine.load_adapter(key, path)
        cold.append((time.perf_counter() - t) * 1000)
    out["cold_adapter_load_ms"] = cold
    out["adapter_file_mb"] = [p.stat().st_size / 2**20 for p in adapters]
    out["cache_hit_load_ms"] = _median_ms(lambda: engine.load_adapter(keys[0], adapters[0]), 50)

    # The raw switch: llama_set_adapters_lora alternating between two adapters (or on/off).
    handles = [engine._adapters[k].handle for k in keys]  # noqa: SLF001
    arrays = [(llama_cpp.llama_adapter_lora_p_ctypes * 1)(h) for h in handles]
    scale = (ctypes.c_float * 1)(1.0)
    flip = {"i": 0}

    def switch() -> None:
        flip["i"] ^= 1
        if len(arrays) > 1:
            llama_cpp.llama_set_adapters_lora(llm.ctx, arrays[flip["i"]], 1, scale)
        elif flip["i"]:
            llama_cpp.llama_set_adapters_lora(llm.ctx, arrays[0], 1, scale)
        else:
            llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)

    out["adapter_switch_ms"] = _median_ms(switch, 200)
    llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
    engine._active = None  # noqa: SLF001 - the raw calls above bypassed the engine

    # KV clear: the call itself, and what always clearing gives up (re-evaluating a prompt
    # that a same-adapter follow-up could otherwise have reused).
    out["kv_clear_ms"] = _median_ms(lambda: (llm._ctx.kv_cache_clear(), llm.reset()), 50)  # noqa: SLF001
    prompt_tokens = llm.tokenize(PROMPT.encode(), add_bos=True)

    def eval_prompt() -> None:
        llm._ctx.kv_cache_clear()  # noqa: SLF001
        llm.reset()
        llm.eval(prompt_tokens)

    out["prompt_tokens"] = len(prompt_tokens)
    out["prompt_eval_ms"] = _median_ms(eval_prompt, 5)

    def tps(key: AdapterKey | None) -> dict:
        runs = []
        for _ in range(3):
            r = engine.generate(PROMPT, key, max_tokens=tokens, temperature=0.0)
            runs.append((r.completion_tokens, r.inference_time_ms, engine.last_timings))
        n, ms, timings = sorted(runs, key=lambda x: x[1])[1]
        return {
            "completion_tokens": n,
            "total_ms": ms,
            "tokens_per_s": n / (ms / 1000),
            "switch_ms_in_request": timings["switch_ms"],
            "clear_ms_in_request": timings["clear_ms"],
        }

    out["base"] = tps(None)
    out["with_adapter"] = tps(keys[0])
    if len(keys) > 1:
        # Alternate adapters request by request: every request pays a real switch.
        alt = []
        for i in range(6):
            engine.generate(PROMPT, keys[i % 2], max_tokens=4, temperature=0.0)
            alt.append(engine.last_timings["switch_ms"])
        out["alternating_switch_ms_in_request"] = statistics.median(alt)
    engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, action="append", required=True)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    print(
        json.dumps(run(args.model, args.adapter, args.n_ctx, args.threads, args.tokens), indent=2)
    )


if __name__ == "__main__":
    main()
