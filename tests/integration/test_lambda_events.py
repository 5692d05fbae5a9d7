"""Each function's Mangum handler fed API Gateway HTTP API v2 events (tests/events/)."""

from __future__ import annotations

import base64
import json

import pytest

pytestmark = pytest.mark.integration


def _json(resp):
    body = resp["body"]
    if resp.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body) if body else None


def test_models_function_get_with_v2_event(invoke, ctx, seed_model, auth_headers):
    import models_fn

    seed_model()
    resp = invoke(
        models_fn,
        "GET",
        "/api/v1/llm/models/gemma-3-270m",
        headers=auth_headers(),
        route_key="GET /api/v1/llm/models/{model_id}",
    )
    assert resp["statusCode"] == 200, resp
    assert _json(resp)["model_id"] == "gemma-3-270m"
    assert resp["headers"]["x-ratelimit-limit"] == "100000"


def test_every_function_answers_401_problem_without_token(invoke, ctx):
    import adapters_fn
    import models_fn
    import monitoring_fn
    import query_fn

    for module, method, path in [
        (models_fn, "GET", "/api/v1/llm/models"),
        (adapters_fn, "GET", "/api/v1/llm/lora/adapters"),
        (query_fn, "POST", "/api/v1/llm/lora/query"),
        (monitoring_fn, "GET", "/api/v1/llm/lora/health"),
    ]:
        resp = invoke(module, method, path, body=None if method == "GET" else "{}")
        assert resp["statusCode"] == 401
        assert resp["headers"]["content-type"] == "application/problem+json"
        assert resp["headers"]["www-authenticate"] == "Bearer"
        assert _json(resp)["error"] == "Unauthorized"


def test_adapters_function_create_with_base64_v2_body(
    invoke, ctx, seed_model, seed_dataset, tenant, auth_headers
):
    import adapters_fn

    seed_model()
    seed_dataset(tenant)
    body = json.dumps(
        {
            "adapter_id": "themis_help_lora",
            "base_model": "gemma-3-270m",
            "training_data": {"dataset_id": "docs_v1"},
        }
    )
    resp = invoke(
        adapters_fn, "POST", "/api/v1/llm/lora/adapters", headers=auth_headers(), body=body
    )
    assert resp["statusCode"] == 201, resp
    assert _json(resp)["version"] == "v1.0"


def test_invalid_json_and_unknown_route_and_500_through_lambda(
    invoke, ctx, auth_headers, monkeypatch
):
    import models_fn

    resp = invoke(models_fn, "POST", "/api/v1/llm/models", headers=auth_headers(), body="{nope")
    assert resp["statusCode"] == 400 and _json(resp)["error"] == "Invalid JSON body"
    resp = invoke(models_fn, "GET", "/nope", headers=auth_headers())
    assert resp["statusCode"] == 404 and _json(resp)["status"] == 404
    from lora_common.services import models

    monkeypatch.setattr(models, "get_model", lambda *a: 1 / 0)
    resp = invoke(models_fn, "GET", "/api/v1/llm/models/x", headers=auth_headers())
    assert resp["statusCode"] == 500
    assert _json(resp)["error"] == "Internal server error"
    assert "ZeroDivision" not in resp["body"]


def test_captured_event_sample_is_a_v2_payload():
    from pathlib import Path

    for name in ("apigw_v2_get.json", "apigw_v2_post.json"):
        event = json.loads((Path(__file__).parents[1] / "events" / name).read_text())
        assert event["version"] == "2.0"
        assert {
            "routeKey",
            "rawPath",
            "rawQueryString",
            "headers",
            "requestContext",
            "isBase64Encoded",
        } <= set(event)
        assert event["requestContext"]["http"]["method"] in ("GET", "POST")
