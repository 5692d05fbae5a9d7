"""Process-wide wiring: settings, repository, blobs, queue, worker client, auth, limiter.

Built lazily on first use (boto3 is imported then, not when a function module is imported),
once per process. Tests and the local stack may install their own with ``set_context``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from lora_common.settings import Settings, get_settings


@dataclass
class Context:
    settings: Settings
    repo: Any
    blobs: Any
    queue: Any
    worker: Any
    authenticator: Any = None
    limiter: Any = None
    clock: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from lora_common import util
        from lora_common.auth import Authenticator
        from lora_common.ratelimit import RateLimiter

        if self.authenticator is None:
            self.authenticator = Authenticator(self.settings)
        if self.limiter is None:
            self.limiter = RateLimiter(self.repo, self.settings.rate_limit_per_hour)
        if self.clock is None:
            self.clock = util.now


def build_context(settings: Settings | None = None, worker: Any = None) -> Context:
    """Context from settings; boto3 clients honour AWS_ENDPOINT_URL on their own."""
    import boto3

    from lora_common.blobs import BlobStore
    from lora_common.jobqueue import JobQueue
    from lora_common.repository import DynamoRepository
    from lora_common.worker_client import worker_client_from

    settings = settings or get_settings()
    session = boto3.session.Session()
    return Context(
        settings=settings,
        repo=DynamoRepository(settings.table_name, session.client("dynamodb")),
        blobs=BlobStore(settings.bucket_name, session.client("s3")),
        queue=JobQueue(settings.queue_url, session.client("sqs")),
        worker=worker if worker is not None else worker_client_from(settings),
    )


_lock = threading.Lock()
_context: Context | None = None


def get_context() -> Context:
    global _context
    if _context is None:
        with _lock:
            if _context is None:
                _context = build_context()
    return _context


def set_context(ctx: Context | None) -> None:
    """Install (or with None, forget) the process context."""
    global _context
    _context = ctx


def current_settings() -> Settings:
    return _context.settings if _context is not None else get_settings()
