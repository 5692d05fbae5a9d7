"""The API side's only way to talk to the inference worker (internal HTTP API, see
docs/ARCHITECTURE.md). Standard-library HTTP, short timeouts; the worker's problem+json
errors come back as domain errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Protocol

from lora_common import errors as e


class WorkerClient(Protocol):
    def health(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def load(self, ref: dict[str, Any]) -> dict[str, Any]: ...
    def unload(self, ref: dict[str, Any]) -> dict[str, Any]: ...
    def status(self, ref: dict[str, Any]) -> dict[str, Any]: ...
    def generate(self, request: dict[str, Any]) -> dict[str, Any]: ...


def adapter_ref(tenant: str, adapter_id: str, version: dict[str, Any]) -> dict[str, Any]:
    """AdapterRef of a ready/stored version item."""
    return {
        "tenant": tenant,
        "adapter_id": adapter_id,
        "version": version["version"],
        "gguf_key": version.get("gguf_key"),
        "gguf_sha256": version.get("gguf_sha256"),
        "scale": 1.0,
    }


_BY_STATUS: dict[int, type[e.DomainError]] = {
    400: e.BadRequest,
    404: e.NotFound,
    409: e.Conflict,
    413: e.PayloadTooLarge,
    503: e.ServiceUnavailable,
}


class UnconfiguredWorkerClient:
    """Used when LORA_WORKER_URL is unset: every call is a 503."""

    def _fail(self, *_: Any) -> dict[str, Any]:
        raise e.ServiceUnavailable(
            "Worker unavailable", "No inference worker is configured (LORA_WORKER_URL is not set)"
        )

    health = stats = load = unload = status = generate = _fail


class HttpWorkerClient:
    def __init__(self, base_url: str, timeout: float = 5.0, generate_timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.generate_timeout = generate_timeout

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._map_error(exc) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
            raise e.ServiceUnavailable(
                "Worker unavailable", "The inference worker did not answer"
            ) from None
        try:
            out = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise e.UpstreamError(
                "Worker error", "The inference worker sent invalid JSON"
            ) from None
        if not isinstance(out, dict):
            raise e.UpstreamError("Worker error", "The inference worker sent an unexpected body")
        return out

    @staticmethod
    def _map_error(exc: urllib.error.HTTPError) -> e.DomainError:
        try:
            body = json.loads(exc.read() or b"{}")
        except (json.JSONDecodeError, OSError):
            body = {}
        if not isinstance(body, dict):
            body = {}
        error = str(body.get("error") or "Worker error")
        details = body.get("details")
        cls = _BY_STATUS.get(exc.code)
        if cls is None:
            return e.UpstreamError("Worker error", f"The inference worker failed ({exc.code})")
        return cls(error, str(details) if details is not None else None)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/internal/health")

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/internal/stats")

    def load(self, ref: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/internal/adapters/load", ref, timeout=self.generate_timeout)

    def unload(self, ref: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/internal/adapters/unload", ref)

    def status(self, ref: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/internal/adapters/status", ref)

    def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/internal/generate", request, timeout=self.generate_timeout)


def worker_client_from(settings: Any) -> WorkerClient:
    if not settings.worker_url:
        return UnconfiguredWorkerClient()  # type: ignore[return-value]
    return HttpWorkerClient(
        settings.worker_url,
        settings.worker_timeout_seconds,
        settings.worker_generate_timeout_seconds,
    )
