# --- serving fixtures (prefix serve_) -------------------------------------------------------
# Real LoRA adapters for the real base model, written with the `gguf` package in the layout
# llama.cpp's adapter loader expects: general.type=adapter, adapter.type=lora,
# adapter.lora.alpha, and per target weight W (ggml ne = [n_in, n_out]) a pair
# `<W>.lora_a` with ne [n_in, rank] and `<W>.lora_b` with ne [rank, n_out], i.e. numpy
# shapes (rank, n_in) and (n_out, rank) (llama.cpp src/llama-adapter.cpp checks exactly this).
from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

SERVE_MODEL_PATH = Path(__file__).resolve().parents[2] / ".data/models/gemma-3-270m-q4_k_m.gguf"
# One thread: with other processes on the same cores, llama.cpp's spinning thread barriers
# make 2 threads several times slower than 1 (measured), and outputs do not depend on it.
SERVE_ENGINE_KWARGS: dict = {"n_ctx": 512, "n_threads": 1}


def serve_base_shapes(model_path: Path) -> dict[str, tuple[int, int]]:
    """(n_in, n_out) of every 2-D block weight of the base model, by tensor name.

    Reads only the GGUF header's tensor table. gguf.GGUFReader would do, but it turns the
    262k-entry tokenizer arrays into Python objects first (about 20 s here).
    """
    fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    with open(model_path, "rb") as f:

        def u32() -> int:
            return struct.unpack("<I", f.read(4))[0]

        def u64() -> int:
            return struct.unpack("<Q", f.read(8))[0]

        def skip(vtype: int) -> None:
            if vtype == 8:  # string
                f.seek(u64(), 1)
            elif vtype == 9:  # array
                etype, count = u32(), u64()
                if etype in fixed:
                    f.seek(fixed[etype] * count, 1)
                else:
                    for _ in range(count):
                        skip(etype)
            else:
                f.seek(fixed[vtype], 1)

        assert f.read(4) == b"GGUF", "not a GGUF file"
        u32()  # version
        n_tensors, n_kv = u64(), u64()
        for _ in range(n_kv):
            f.seek(u64(), 1)  # key
            skip(u32())
        shapes = {}
        for _ in range(n_tensors):
            name = f.read(u64()).decode()
            dims = [u64() for _ in range(u32())]
            u32(), u64()  # type, offset
            if len(dims) == 2 and name.startswith("blk."):
                shapes[name] = (dims[0], dims[1])
    return shapes


def serve_write_lora(
    path: Path,
    shapes: dict[str, tuple[int, int]],
    *,
    seed: int,
    layers: range | list[int],
    targets: tuple[str, ...] = ("attn_q", "attn_v"),
    rank: int = 8,
    alpha: float = 8.0,
    b_std: float = 0.05,
    architecture: str = "gemma3",
) -> Path:
    """Write a random LoRA GGUF strong enough to change the base model's greedy output."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch=architecture)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for layer in layers:
        for target in targets:
            name = f"blk.{layer}.{target}.weight"
            n_in, n_out = shapes[name]
            a = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(rank, n_in)).astype(np.float32)
            b = rng.normal(0.0, b_std, size=(n_out, rank)).astype(np.float32)
            writer.add_tensor(f"{name}.lora_a", a)
            writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def serve_model_path() -> Path:
    assert SERVE_MODEL_PATH.is_file(), f"base model missing: {SERVE_MODEL_PATH}"
    return SERVE_MODEL_PATH


@pytest.fixture(scope="session")
def serve_lora_files(serve_model_path: Path, tmp_path_factory) -> dict[str, Path]:
    """Named adapter files: two strong ones (a, b) and three of graded sizes for eviction."""
    shapes = serve_base_shapes(serve_model_path)
    out = tmp_path_factory.mktemp("serve_loras")
    all_layers = range(18)
    return {
        "a": serve_write_lora(out / "a.gguf", shapes, seed=1, layers=all_layers),
        "b": serve_write_lora(out / "b.gguf", shapes, seed=2, layers=all_layers),
        "c": serve_write_lora(out / "c.gguf", shapes, seed=3, layers=all_layers),
        # ~0.4 MB and ~1.5 MB files for the memory bound.
        "small": serve_write_lora(out / "small.gguf", shapes, seed=4, layers=range(4)),
        "large": serve_write_lora(out / "large.gguf", shapes, seed=5, layers=all_layers, rank=8),
        "wrong_arch": serve_write_lora(
            out / "wrong_arch.gguf", shapes, seed=6, layers=range(2), architecture="llama"
        ),
        # Right names and metadata, wrong input width: only llama.cpp's loader can tell.
        "bad_shape": serve_write_lora(
            out / "bad_shape.gguf",
            {k: (n_in + 32, n_out) for k, (n_in, n_out) in shapes.items()},
            seed=7,
            layers=range(2),
        ),
    }


@pytest.fixture(scope="session")
def serve_engine(serve_model_path: Path) -> Iterator[object]:
    """The one real-model engine shared by the e2e serving tests (loaded once)."""
    from gpu_worker.serving.engine import Engine

    engine = Engine(serve_model_path, **SERVE_ENGINE_KWARGS, max_adapters=4, max_adapter_mb=64)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def serve_engine_kwargs() -> dict:
    """Engine settings the serving tests share (small context, one thread)."""
    return dict(SERVE_ENGINE_KWARGS)


@pytest.fixture
def serve_engine_factory(serve_model_path: Path) -> Iterator[object]:
    """Fresh engines (cold state, own cache limits), closed after the test."""
    from gpu_worker.serving.engine import Engine

    made: list[Engine] = []

    def make(**kwargs: object) -> Engine:
        params: dict = SERVE_ENGINE_KWARGS | kwargs
        engine = Engine(serve_model_path, **params)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.fixture(scope="module")
def serve_s3(aws_endpoint: str) -> dict[str, object]:
    """A bucket of its own on the session's moto server (tests/conftest.py's aws_endpoint)."""
    import boto3

    client = boto3.client("s3")
    bucket = "serve-test-bucket"
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    return {"endpoint": aws_endpoint, "bucket": bucket, "client": client}


# --- end serving fixtures -------------------------------------------------------------------
