"""Per-token fixed-window rate limit counted in DynamoDB.

The counter is an atomic ``UpdateItem ADD`` on the ``RATE#<token digest>#<window>`` item, so
the limit holds across every Lambda instance; the item expires through the table's TTL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from lora_common import keys
from lora_common.errors import RateLimited

WINDOW_SECONDS = 3600


class RateCounter(Protocol):
    def increment_rate(self, key: dict[str, str], expires_at: int) -> int: ...


@dataclass(frozen=True)
class RateDecision:
    limit: int
    remaining: int
    reset_epoch: int
    retry_after: int
    allowed: bool

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_epoch),
        }


class RateLimiter:
    def __init__(self, counter: RateCounter, limit_per_hour: int) -> None:
        self.counter = counter
        self.limit = limit_per_hour

    def hit(self, token_digest: str, now: float) -> RateDecision:
        window = int(now // WINDOW_SECONDS)
        reset = (window + 1) * WINDOW_SECONDS
        count = self.counter.increment_rate(keys.rate(token_digest, window), reset + 60)
        return RateDecision(
            limit=self.limit,
            remaining=max(0, self.limit - count),
            reset_epoch=reset,
            retry_after=max(1, math.ceil(reset - now)),
            allowed=count <= self.limit,
        )

    def check(self, token_digest: str, now: float) -> RateDecision:
        """Count one request; raise RateLimited (with the counter headers) when over."""
        decision = self.hit(token_digest, now)
        if not decision.allowed:
            raise RateLimited(
                "Rate limit exceeded",
                f"Maximum {self.limit} requests per hour exceeded",
                retry_after=decision.retry_after,
                headers=decision.headers(),
            )
        return decision
