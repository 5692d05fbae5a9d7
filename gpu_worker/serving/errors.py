"""Domain errors of the serving worker.

Each error type carries its own HTTP status and a stable machine code; `server.py` renders
them as problem+json. Nothing here knows about FastAPI, and no status is ever derived from a
message text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class WorkerError(Exception):
    """Base of every error the worker reports to its caller."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, details: str, **context: Any) -> None:
        super().__init__(details)
        self.details = details
        self.context = context


class InvalidRequestError(WorkerError):
    """The request body is malformed or a value is out of range."""

    status = 400
    code = "invalid_request"
    title = "Invalid request"


class AdapterFileNotFoundError(WorkerError):
    """The adapter's GGUF object does not exist in the bucket."""

    status = 404
    code = "adapter_file_not_found"
    title = "Adapter file not found"


class ModelMismatchError(WorkerError):
    """The request names a base model other than the one this worker serves."""

    status = 409
    code = "model_mismatch"
    title = "Model mismatch"


class AdapterTooLargeError(WorkerError):
    """One adapter alone exceeds the worker's adapter memory budget."""

    status = 413
    code = "adapter_too_large"
    title = "Adapter too large"


class AdapterChecksumError(WorkerError):
    """The downloaded file's sha256 differs from the one the caller recorded."""

    status = 422
    code = "adapter_checksum_mismatch"
    title = "Adapter checksum mismatch"


class AdapterInvalidError(WorkerError):
    """llama.cpp refused the adapter file (wrong architecture, shapes, or not a LoRA GGUF)."""

    status = 422
    code = "adapter_invalid"
    title = "Adapter invalid"


class AdapterNotLoadedError(WorkerError):
    """A generate named an adapter that is not in the engine's cache.

    The HTTP layer loads the adapter and retries, so callers only see this when an adapter
    is evicted again between its load and its use more often than the retry budget allows.
    """

    status = 503
    code = "adapter_not_loaded"
    title = "Adapter not loaded"


class PromptTooLongError(WorkerError):
    """Prompt plus max_tokens does not fit in the context window."""

    status = 400
    code = "prompt_too_long"
    title = "Prompt too long"


class StorageUnavailableError(WorkerError):
    """The object store failed for a reason other than a missing object."""

    status = 503
    code = "storage_unavailable"
    title = "Storage unavailable"
