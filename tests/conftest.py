"""Shared fixtures: moto server over the real AWS wire protocol, resources from
template.yaml, a per-test service context, a recording worker double, the combined app
served by uvicorn over real HTTP, and a Mangum invoker fed API Gateway v2 events."""

from __future__ import annotations

import base64
import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

REPO = Path(__file__).resolve().parents[1]
EVENTS = Path(__file__).parent / "events"
GEMMA = REPO / ".data" / "models" / "gemma-3-270m-q4_k_m.gguf"
SECRET = "test-secret-for-hs256-tokens-only-in-tests-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- AWS (moto server) ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    # Set before any client exists: boto3 reads AWS_ENDPOINT_URL itself.
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_SESSION_TOKEN", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.delenv("AWS_PROFILE", raising=False)
    yield endpoint
    mp.undo()
    server.stop()


@pytest.fixture(scope="session")
def aws_resources(aws_endpoint: str) -> dict[str, str]:
    from devstack.resources import create_resources

    return create_resources(REPO / "template.yaml", aws_endpoint, name_prefix="lora-test")


@pytest.fixture(scope="session")
def boto_session(aws_resources: dict[str, str]) -> Any:
    import boto3

    return boto3.session.Session()


def _truncate(session: Any, names: dict[str, str]) -> None:
    """Empty the table and the training queue so each test starts from nothing."""
    sqs = session.client("sqs")
    # PurgeQueue is limited to once a minute, so drain instead.
    while True:
        msgs = sqs.receive_message(
            QueueUrl=names["queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        if not msgs:
            break
        sqs.delete_message_batch(
            QueueUrl=names["queue_url"],
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)
            ],
        )
    ddb = session.client("dynamodb")
    paginator = ddb.get_paginator("scan")
    for page in paginator.paginate(TableName=names["table_name"], ProjectionExpression="pk, sk"):
        for item in page.get("Items", []):
            ddb.delete_item(TableName=names["table_name"], Key={"pk": item["pk"], "sk": item["sk"]})


# --- worker double -------------------------------------------------------------------------


class FakeWorker:
    """A tiny real HTTP server speaking the internal worker API; it records every call.
    It stands in for the GPU worker (the next issue) so the API side's wire format is tested."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.model_loaded = True
        self.loaded: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.fail: dict[str, tuple[int, dict[str, Any]]] = {}
        self.server: ThreadingHTTPServer | None = None

    def reset(self) -> None:
        self.calls.clear()
        self.loaded.clear()
        self.fail.clear()
        self.model_loaded = True

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.calls]

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        self.calls.append((method, path, body))
        if path in self.fail:
            return self.fail[path]
        key = None
        if isinstance(body, dict) and "adapter_id" in body:
            key = (body["tenant"], body["adapter_id"], body["version"])
        if path == "/internal/health":
            return 200, {
                "model_id": "gemma-3-270m",
                "model_loaded": self.model_loaded,
                "architecture": "gemma3",
                "n_ctx": 2048,
            }
        if path == "/internal/stats":
            return 200, {
                "loaded_adapters": len(self.loaded),
                "cache_hits": 3,
                "cache_misses": 1,
                "total_inferences": 7,
                "avg_load_time_ms": 12.5,
                "uptime_seconds": 42,
                "memory_usage_mb": 900,
            }
        if path == "/internal/adapters/load":
            hit = key in self.loaded
            self.loaded[key] = {"last_used": "2026-12-03T16:00:00Z"}
            return 200, {"load_time_ms": 45, "memory_usage_mb": 32, "cache_hit": hit}
        if path == "/internal/adapters/unload":
            return 200, {"unloaded": self.loaded.pop(key, None) is not None}
        if path == "/internal/adapters/status":
            entry = self.loaded.get(key)
            return 200, {
                "is_loaded": entry is not None,
                "memory_usage_mb": 32 if entry else 0,
                "last_used": entry["last_used"] if entry else None,
            }
        if path == "/internal/generate":
            return 200, {
                "text": f"echo: {body['prompt']}",
                "prompt_tokens": 5,
                "completion_tokens": 7,
                "inference_time_ms": 12,
                "adapter_cache_hit": None if body.get("adapter") is None else True,
            }
        return 404, {
            "error": "Not found",
            "status": 404,
            "type": "about:blank",
            "title": "Not Found",
        }


@pytest.fixture(scope="session")
def worker_server() -> Iterator[FakeWorker]:
    worker = FakeWorker()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(n) if n else b""
            body = json.loads(raw) if raw else None
            status, out = worker.handle(self.command, self.path, body)
            data = json.dumps(out).encode()
            self.send_response(status)
            ctype = "application/json" if status < 400 else "application/problem+json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    worker.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=worker.server.serve_forever, daemon=True).start()
    yield worker
    worker.server.shutdown()


# --- settings, context ---------------------------------------------------------------------


@pytest.fixture
def make_settings(aws_resources: dict[str, str]):
    from lora_common.settings import Settings

    def make(**overrides: Any) -> Any:
        values: dict[str, Any] = dict(
            mode="local",
            table_name=aws_resources["table_name"],
            bucket_name=aws_resources["bucket_name"],
            queue_url=aws_resources["queue_url"],
            jwt_secret=SECRET,
            jwt_issuer="lora-test",
            jwt_audience="lora-test-api",
            rate_limit_per_hour=100_000,
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_ctx(make_settings, boto_session, aws_resources, worker_server):
    from lora_common.context import build_context, set_context

    _truncate(boto_session, aws_resources)
    worker_server.reset()

    def make(worker: bool = True, **overrides: Any) -> Any:
        if worker:
            overrides.setdefault("worker_url", worker_server.url)
        ctx = build_context(make_settings(**overrides))
        set_context(ctx)
        return ctx

    yield make
    set_context(None)


@pytest.fixture
def ctx(make_ctx):
    """Service context (local mode, HS256) with the recording worker configured."""
    return make_ctx()


@pytest.fixture
def settings(ctx):
    return ctx.settings


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def token_factory(ctx):
    """token(tenant=..., scopes=..., sub=..., ttl_seconds=..., **claims) -> JWT"""
    from lora_common.auth import mint_local_token

    def make(**kw: Any) -> str:
        kw.setdefault("sub", "user-1")
        return mint_local_token(ctx.settings, **kw)

    return make


@pytest.fixture
def auth_headers(token_factory, tenant):
    def make(scopes: tuple[str, ...] = ("lora:admin",), tenant_id: str | None = None, **kw: Any):
        token = token_factory(tenant=tenant_id or tenant, scopes=scopes, **kw)
        return {"Authorization": f"Bearer {token}"}

    return make


# --- HTTP: the combined app over uvicorn ---------------------------------------------------


@pytest.fixture(scope="session")
def combined_app():
    import adapters_fn
    import models_fn
    import monitoring_fn
    import query_fn
    from lora_common.problem import create_app

    return create_app([m.router for m in (models_fn, adapters_fn, query_fn, monitoring_fn)])


@pytest.fixture(scope="session")
def live_server(combined_app) -> Iterator[str]:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        combined_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def client(live_server, ctx):
    import httpx

    with httpx.Client(base_url=live_server, timeout=30) as c:
        yield c


@pytest.fixture
def api(client, auth_headers):
    """api(method, path, scopes=..., tenant_id=..., **httpx kwargs) with a valid token."""

    def call(method: str, path: str, scopes=("lora:admin",), tenant_id=None, **kw: Any):
        headers = {**auth_headers(scopes=scopes, tenant_id=tenant_id), **kw.pop("headers", {})}
        return client.request(method, path, headers=headers, **kw)

    return call


# --- Lambda: Mangum handlers fed API Gateway HTTP API v2 events -------------------------------


@pytest.fixture
def invoke():
    """invoke(module, method, path, headers=..., query=..., body=..., route_key=...)"""

    def call(
        module: Any,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        body: bytes | str | None = None,
        route_key: str | None = None,
    ) -> dict[str, Any]:
        template = "apigw_v2_post.json" if body is not None else "apigw_v2_get.json"
        event = copy.deepcopy(json.loads((EVENTS / template).read_text()))
        event["rawPath"] = path
        event["requestContext"]["http"]["method"] = method
        event["requestContext"]["http"]["path"] = path
        event["routeKey"] = event["requestContext"]["routeKey"] = route_key or f"{method} {path}"
        event["rawQueryString"] = urlencode(query or {})
        event["queryStringParameters"] = query or None
        event["headers"] = {
            k: v
            for k, v in event["headers"].items()
            if k not in ("authorization", "content-length", "content-type")
        }
        event["headers"].update({k.lower(): v for k, v in (headers or {}).items()})
        if body is None:
            event.pop("body", None)
            event["isBase64Encoded"] = False
        else:
            raw = body.encode() if isinstance(body, str) else body
            event["headers"]["content-length"] = str(len(raw))
            event["headers"].setdefault("content-type", "application/json")
            event["body"] = base64.b64encode(raw).decode()
            event["isBase64Encoded"] = True
        return module.handler(event, None)

    return call


# --- domain fixtures -----------------------------------------------------------------------


@pytest.fixture
def gemma_path() -> Path:
    if not GEMMA.exists():
        pytest.skip("the Gemma 3 270M GGUF is not present (the lead's setup creates it)")
    return GEMMA


@pytest.fixture
def seed_model(ctx):
    """A registered trainable model without a readable file (file_status unverified)."""

    def make(model_id: str = "gemma-3-270m", architecture: str = "gemma3", **extra: Any):
        from lora_common.services import models
        from lora_common.validation import RegisterModelRequest

        req = RegisterModelRequest(
            model_id=model_id,
            architecture=architecture,
            parameter_count=268098176,
            quantization="Q4_K_M",
            gguf_path="/models/does-not-exist.gguf",
            **extra,
        )
        return models.register_model(ctx, req)

    return make


@pytest.fixture
def seed_dataset(ctx):
    def make(tenant: str, dataset_id: str = "docs_v1", n: int = 3):
        from lora_common.services import datasets

        body = "\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(n))
        return datasets.create_from_jsonl(ctx, tenant, dataset_id, None, body.encode())

    return make


@pytest.fixture
def ready_adapter(ctx, seed_model, seed_dataset):
    """Create an adapter and flip v1.0 to ready the way the worker does."""

    def make(tenant: str, adapter_id: str = "themis_help_lora", model_id: str = "gemma-3-270m"):
        from lora_common.services import adapters
        from lora_common.validation import CreateAdapterRequest

        if ctx.repo.get_model(model_id) is None:
            seed_model(model_id)
        if ctx.repo.get_dataset(tenant, "docs_v1") is None:
            seed_dataset(tenant)
        out = adapters.create_adapter(
            ctx,
            tenant,
            CreateAdapterRequest(
                adapter_id=adapter_id, base_model=model_id, training_data={"dataset_id": "docs_v1"}
            ),
        )
        flip_ready(ctx, out["job_id"])
        return out

    return make


def flip_ready(ctx: Any, job_id: str, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    job = ctx.repo.claim_job(job_id, time.time())
    assert job is not None
    prefix = f"adapters/{job['tenant']}/{job['adapter_id']}/{job['version']}/"
    ctx.blobs.put_bytes(prefix + "adapter.gguf", b"GGUF-fake")
    ctx.blobs.put_bytes(prefix + "manifest.json", b"{}")
    ctx.repo.mark_version_ready(
        job,
        {
            "artifact_prefix": prefix,
            "manifest_key": prefix + "manifest.json",
            "manifest_sha256": "0" * 64,
            "gguf_key": prefix + "adapter.gguf",
            "gguf_sha256": "1" * 64,
            "gguf_size": 9,
        },
        metrics or {"training_loss": 0.15, "validation_accuracy": 0.92},
        time.time(),
    )
    return job


@pytest.fixture
def flip():
    return flip_ready
