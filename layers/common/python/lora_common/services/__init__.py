"""Domain services. They take a Context and validated inputs and know nothing of HTTP."""

from __future__ import annotations

from typing import Any

from lora_common.errors import BadRequest


def paginate(items: list[Any], limit: int, offset: int) -> tuple[list[Any], int]:
    """Slice of ``items`` and the total. limit 1..100, offset >= 0 (checked again here so
    callers other than the HTTP layer get the same rule)."""
    if not 1 <= limit <= 100:
        raise BadRequest("Invalid pagination", "limit must be between 1 and 100")
    if offset < 0:
        raise BadRequest("Invalid pagination", "offset must be >= 0")
    return items[offset : offset + limit], len(items)
