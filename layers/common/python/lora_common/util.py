"""Small helpers shared by services: clock, ids, timestamps."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)


def now() -> float:
    """Current epoch time in seconds (one place to patch in tests)."""
    return time.time()


def iso(ts: float) -> str:
    """Epoch seconds -> RFC 3339 UTC with a trailing Z (second precision)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def is_valid_id(value: str) -> bool:
    """Ids end up inside DynamoDB keys and S3 keys, so '#', '/' and spaces are refused."""
    return bool(_ID_RE.match(value))


def version_number(version: str) -> int:
    """'v1.12' -> 12. Versions are ordered numerically, never as strings."""
    return int(version.rsplit(".", 1)[1])


def version_name(n: int) -> str:
    return f"v1.{n}"
