"""Every app route has a gateway route to the function that serves it, and vice versa."""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any

import pytest
from infra_helpers import REPO

pytestmark = pytest.mark.infra


def handler_functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in template["Resources"].items()
            if v["Type"] == "AWS::Serverless::Function"}


def gateway_routes(props: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["Properties"]["Method"].upper(), e["Properties"]["Path"])
            for e in props.get("Events", {}).values() if e["Type"] == "Api"}


def walk_routes(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    """(METHOD, path) of every APIRoute, descending into included routers (newer FastAPI
    keeps `include_router` as one wrapper route holding the original router)."""
    from fastapi.routing import APIRoute

    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, APIRoute):
            found |= {(m, prefix + route.path) for m in route.methods}
        elif getattr(route, "original_router", None) is not None:
            context = getattr(route, "include_context", None)
            found |= walk_routes(route.original_router.routes,
                                 prefix + getattr(context, "prefix", ""))
        # Anything else (FastAPI's own /openapi.json is a plain Route) is not published.
    return found


def app_routes(module_name: str) -> set[tuple[str, str]]:
    return walk_routes(importlib.import_module(module_name).app.routes)


def test_every_handler_path_imports(template) -> None:
    for name, props in handler_functions(template).items():
        module_name, _, attr = props["Handler"].rpartition(".")
        code = REPO / props["CodeUri"]
        assert (code / f"{module_name}.py").exists(), f"{name}: {props['Handler']} not in {code}"
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), f"{name}: {props['Handler']} is not callable"


@pytest.mark.parametrize("function", ["ModelsFunction", "AdaptersFunction", "QueryFunction",
                                      "MonitoringFunction"])
def test_app_routes_equal_gateway_routes(template, function: str) -> None:
    props = handler_functions(template)[function]
    module_name = props["Handler"].rpartition(".")[0]
    in_app, in_gateway = app_routes(module_name), gateway_routes(props)
    assert in_app - in_gateway == set(), f"{function}: app routes without a gateway route"
    assert in_gateway - in_app == set(), f"{function}: gateway routes nothing serves"


def test_no_route_is_claimed_by_two_functions(template) -> None:
    counts = Counter(r for p in handler_functions(template).values() for r in gateway_routes(p))
    assert [r for r, n in counts.items() if n > 1] == []


def test_public_api_routes_are_all_published(template) -> None:
    """The routes of the public API reference (plus jobs and datasets) reach a function."""
    expected = {
        ("POST", "/api/v1/llm/models"), ("GET", "/api/v1/llm/models"),
        ("GET", "/api/v1/llm/models/{model_id}"), ("DELETE", "/api/v1/llm/models/{model_id}"),
        ("POST", "/api/v1/llm/lora/adapters"), ("GET", "/api/v1/llm/lora/adapters"),
        ("GET", "/api/v1/llm/lora/adapters/{adapter_id}"),
        ("PUT", "/api/v1/llm/lora/adapters/{adapter_id}"),
        ("DELETE", "/api/v1/llm/lora/adapters/{adapter_id}"),
        ("POST", "/api/v1/llm/lora/adapters/{adapter_id}/load"),
        ("POST", "/api/v1/llm/lora/adapters/{adapter_id}/unload"),
        ("GET", "/api/v1/llm/lora/adapters/{adapter_id}/status"),
        ("POST", "/api/v1/llm/lora/query"), ("GET", "/api/v1/llm/lora/stats"),
        ("GET", "/api/v1/llm/lora/health"), ("GET", "/api/v1/llm/lora/jobs/{job_id}"),
        ("POST", "/api/v1/llm/datasets"), ("GET", "/api/v1/llm/datasets"),
        ("GET", "/api/v1/llm/datasets/{dataset_id}"),
        ("DELETE", "/api/v1/llm/datasets/{dataset_id}"),
    }
    published = {r for p in handler_functions(template).values() for r in gateway_routes(p)}
    assert expected - published == set()
