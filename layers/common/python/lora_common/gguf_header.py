"""Streaming GGUF header reader.

Pulls bytes on demand through a ``read(offset, n) -> bytes`` callable, so a model file in S3
is inspected with a handful of ranged GETs and never downloaded whole (``gguf.GGUFReader``
memory-maps the entire file, which S3 cannot offer). Parses the fixed header, every
key/value pair and every tensor info; tensor data is never touched. Value types, tensor
types and file types come from the ``gguf`` package's enums (imported lazily: it pulls numpy).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Reader = Callable[[int, int], bytes]

# KV arrays longer than this are skipped rather than materialized (tokenizer vocabularies).
_KEEP_ARRAY_MAX = 64
_MAX_STRING = 1 << 24
_MAX_COUNT = 1 << 32
_MAX_DIMS = 8


class GGUFFormatError(ValueError):
    """The bytes are not a (supported) GGUF file."""


@dataclass
class ModelFileInfo:
    """What the header says about a model file."""

    gguf_version: int
    architecture: str | None
    name: str | None
    file_type: int | None
    quantization: str | None
    parameter_count: int
    context_length: int | None
    vocab_size: int | None
    tensor_count: int
    kv_count: int
    header_size: int
    alignment: int
    tensor_types: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stream:
    """Forward-only byte stream over ``read`` with a growing read-ahead buffer."""

    def __init__(self, read: Reader, chunk: int = 256 * 1024, max_chunk: int = 8 << 20) -> None:
        self._read = read
        self._buf = b""
        self._buf_start = 0
        self.pos = 0
        self._chunk = chunk
        self._max_chunk = max_chunk
        self.requests = 0

    def _fill(self, n: int) -> None:
        start = self.pos
        have_end = self._buf_start + len(self._buf)
        if start >= self._buf_start and start + n <= have_end:
            return
        keep = self._buf[start - self._buf_start :] if self._buf_start <= start < have_end else b""
        fetch_from = start + len(keep)
        want = max(n - len(keep), self._chunk)
        data = self._read(fetch_from, want)
        self.requests += 1
        self._chunk = min(self._chunk * 2, self._max_chunk)
        self._buf = keep + data
        self._buf_start = start
        if len(self._buf) < n:
            raise GGUFFormatError(f"unexpected end of file at byte {start + len(self._buf)}")

    def take(self, n: int) -> bytes:
        self._fill(n)
        off = self.pos - self._buf_start
        self.pos += n
        return self._buf[off : off + n]

    def skip(self, n: int) -> None:
        # Skipping never fetches: the next take() reads from the new position.
        self.pos += n


def read_header(read: Reader) -> ModelFileInfo:
    """Parse the GGUF header available through ``read(offset, n)``."""
    import gguf

    vt = gguf.GGUFValueType
    s = _Stream(read)
    try:
        magic = s.take(4)
    except GGUFFormatError:
        raise GGUFFormatError("file is too short to be GGUF") from None
    if struct.unpack("<I", magic)[0] != gguf.GGUF_MAGIC:
        raise GGUFFormatError("not a GGUF file (bad magic)")
    raw_version = s.take(4)
    version = struct.unpack("<I", raw_version)[0]
    endian = "<"
    if version & 0xFFFF == 0:  # written big-endian
        endian = ">"
        version = struct.unpack(">I", raw_version)[0]
    if version not in (2, 3):
        raise GGUFFormatError(f"unsupported GGUF version {version}")

    def u32() -> int:
        return struct.unpack(endian + "I", s.take(4))[0]

    def u64() -> int:
        return struct.unpack(endian + "Q", s.take(8))[0]

    def string() -> str:
        n = u64()
        if n > _MAX_STRING:
            raise GGUFFormatError("string length out of range")
        return s.take(n).decode("utf-8", errors="replace")

    scalar = {
        vt.UINT8: "B", vt.INT8: "b", vt.UINT16: "H", vt.INT16: "h", vt.UINT32: "I",
        vt.INT32: "i", vt.FLOAT32: "f", vt.BOOL: "?", vt.UINT64: "Q", vt.INT64: "q",
        vt.FLOAT64: "d",
    }  # fmt: skip

    def value(kind: int) -> Any:
        try:
            kind = vt(kind)
        except ValueError:
            raise GGUFFormatError(f"unknown value type {kind}") from None
        if kind in scalar:
            fmt = endian + scalar[kind]
            return struct.unpack(fmt, s.take(struct.calcsize(fmt)))[0]
        if kind == vt.STRING:
            return string()
        # ARRAY
        item_kind = u32()
        count = u64()
        if count > _MAX_COUNT:
            raise GGUFFormatError("array length out of range")
        try:
            item_kind = vt(item_kind)
        except ValueError:
            raise GGUFFormatError(f"unknown array item type {item_kind}") from None
        if item_kind in scalar and count > _KEEP_ARRAY_MAX:
            s.skip(count * struct.calcsize(endian + scalar[item_kind]))
            return _SkippedArray(count)
        if item_kind == vt.STRING and count > _KEEP_ARRAY_MAX:
            for _ in range(count):
                s.skip(u64())
            return _SkippedArray(count)
        return [value(item_kind) for _ in range(count)]

    tensor_count = u64()
    kv_count = u64()
    if tensor_count > 1 << 24 or kv_count > 1 << 20:
        raise GGUFFormatError("tensor/kv count out of range")
    kv: dict[str, Any] = {}
    for _ in range(kv_count):
        key = string()
        kv[key] = value(u32())

    params = 0
    tensor_types: dict[str, int] = {}
    for _ in range(tensor_count):
        string()  # tensor name
        n_dims = u32()
        if n_dims > _MAX_DIMS:
            raise GGUFFormatError("tensor rank out of range")
        n = 1
        for _ in range(n_dims):
            n *= u64()
        ttype = u32()
        u64()  # data offset
        params += n
        try:
            tname = gguf.GGMLQuantizationType(ttype).name
        except ValueError:
            tname = str(ttype)
        tensor_types[tname] = tensor_types.get(tname, 0) + n

    alignment = kv.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT)
    arch = kv.get(gguf.Keys.General.ARCHITECTURE)
    arch = arch if isinstance(arch, str) else None
    file_type = kv.get(gguf.Keys.General.FILE_TYPE)
    quant = None
    if isinstance(file_type, int):
        try:
            quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = None
    else:
        file_type = None

    def arch_int(template: str) -> int | None:
        if not arch:
            return None
        v = kv.get(template.format(arch=arch))
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    vocab = arch_int(gguf.Keys.LLM.VOCAB_SIZE)
    tokens = kv.get(gguf.Keys.Tokenizer.LIST)
    if vocab is None and tokens is not None:
        vocab = len(tokens)
    name = kv.get(gguf.Keys.General.NAME)
    return ModelFileInfo(
        gguf_version=version,
        architecture=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type,
        quantization=quant,
        parameter_count=params,
        context_length=arch_int(gguf.Keys.LLM.CONTEXT_LENGTH),
        vocab_size=vocab,
        tensor_count=tensor_count,
        kv_count=kv_count,
        header_size=s.pos,
        alignment=int(alignment),
        tensor_types=tensor_types,
    )


class _SkippedArray:
    """Stands in for a long array that was skipped; only its length is kept."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


def file_reader(path: str) -> Reader:
    """``read(offset, n)`` over a local file (opened per call; the header is small)."""

    def read(offset: int, n: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(n)

    return read
