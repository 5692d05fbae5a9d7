"""Error mapping by type, validation rendering and the worker client's failure modes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lora_common import errors as e
from lora_common.problem import problem_body, status_for, validation_error
from lora_common.worker_client import HttpWorkerClient, UnconfiguredWorkerClient

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "cls, status",
    [
        (e.BadRequest, 400), (e.ValidationFailed, 400), (e.Unauthorized, 401),
        (e.Forbidden, 403), (e.NotFound, 404), (e.MethodNotAllowed, 405), (e.Conflict, 409),
        (e.PayloadTooLarge, 413), (e.UnsupportedMediaType, 415), (e.InternalError, 500),
        (e.UpstreamError, 502), (e.ServiceUnavailable, 503),
    ],
)  # fmt: skip
def test_status_is_chosen_by_type_not_message(cls, status):
    assert status_for(cls("Not found")) == status  # the message text never matters


def test_problem_body_has_seed_and_rfc9457_fields():
    body = problem_body(e.NotFound("Adapter not found", "Unknown adapter_id: invalid_adapter"))
    assert body == {
        "type": "urn:lora:problem:not-found",
        "title": "Not Found",
        "status": 404,
        "error": "Adapter not found",
        "details": "Unknown adapter_id: invalid_adapter",
    }


def test_validation_error_never_echoes_input():
    err = validation_error(
        [{"type": "int_parsing", "loc": ("body", "rank"), "msg": "bad", "input": "s3cr3t"}]
    )
    assert err.errors == [{"field": "rank", "reason": "bad"}]
    assert "s3cr3t" not in json.dumps(problem_body(err))


def test_json_invalid_becomes_seed_invalid_json_body():
    err = validation_error([{"type": "json_invalid", "loc": ("body", 1), "msg": "x"}])
    assert isinstance(err, e.BadRequest) and err.error == "Invalid JSON body"


def test_unconfigured_worker_is_503_with_reason():
    with pytest.raises(e.ServiceUnavailable) as info:
        UnconfiguredWorkerClient().generate({})
    assert info.value.error == "Worker unavailable"
    assert info.value.details == "No inference worker is configured (LORA_WORKER_URL is not set)"


def test_unreachable_worker_is_503():
    client = HttpWorkerClient("http://127.0.0.1:9", timeout=0.5)
    with pytest.raises(e.ServiceUnavailable):
        client.health()


def test_worker_problem_json_maps_back_to_domain_errors():
    answers = {
        "/internal/adapters/load": (404, {"error": "Adapter file missing", "details": "no key"}),
        "/internal/adapters/status": (500, {"error": "oops"}),
        "/internal/stats": (200, b"not json"),
    }

    class H(BaseHTTPRequestHandler):
        def _serve(self):
            status, body = answers[self.path]
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = HttpWorkerClient(f"http://127.0.0.1:{srv.server_address[1]}")
        with pytest.raises(e.NotFound) as nf:
            client.load({"adapter_id": "a"})
        assert (nf.value.error, nf.value.details) == ("Adapter file missing", "no key")
        with pytest.raises(e.UpstreamError):
            client.status({})
        with pytest.raises(e.UpstreamError):
            client.stats()
    finally:
        srv.shutdown()
