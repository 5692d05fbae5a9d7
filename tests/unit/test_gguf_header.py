"""GGUF header reader against the real Gemma file, synthetic files and non-GGUF bytes."""

from __future__ import annotations

import struct

import pytest

from lora_common.gguf_header import GGUFFormatError, file_reader, read_header

pytestmark = pytest.mark.unit


def test_given_real_gemma_file_when_reading_header_then_facts_match_gguf_reader(gemma_path):
    calls: list[tuple[int, int]] = []
    base = file_reader(str(gemma_path))

    def read(offset: int, n: int) -> bytes:
        calls.append((offset, n))
        return base(offset, n)

    info = read_header(read)
    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert info.file_type == 15
    assert info.context_length == 32768
    assert info.vocab_size == 262144
    assert info.tensor_count == 236
    # Same count as gguf.GGUFReader's sum of tensor element counts.
    assert info.parameter_count == 268_098_176
    # Only the header is read, in a few requests, never the whole 250 MB file.
    assert sum(n for _, n in calls) < 16 * 1024 * 1024
    assert len(calls) <= 8
    assert info.header_size < gemma_path.stat().st_size


def _bytes_reader(data: bytes):
    return lambda off, n: data[off : off + n]


def test_given_non_gguf_bytes_then_format_error():
    with pytest.raises(GGUFFormatError, match="bad magic"):
        read_header(_bytes_reader(b"PK\x03\x04 this is a zip file" * 10))


def test_given_empty_file_then_format_error():
    with pytest.raises(GGUFFormatError):
        read_header(_bytes_reader(b""))


def test_given_truncated_header_then_format_error(gemma_path):
    head = file_reader(str(gemma_path))(0, 4096)
    with pytest.raises(GGUFFormatError, match="end of file"):
        read_header(_bytes_reader(head))


def test_given_unsupported_version_then_format_error():
    data = b"GGUF" + struct.pack("<IQQ", 1, 0, 0)
    with pytest.raises(GGUFFormatError, match="version"):
        read_header(_bytes_reader(data))


def test_given_small_written_gguf_then_values_roundtrip(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_token_list([f"tok{i}" for i in range(100)])
    w.add_tensor("a", np.zeros((4, 8), dtype=np.float32))
    w.add_tensor("b", np.zeros((3,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_header(file_reader(str(path)))
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert info.vocab_size == 100
    assert info.parameter_count == 35
    assert info.quantization == "ALL_F32"
