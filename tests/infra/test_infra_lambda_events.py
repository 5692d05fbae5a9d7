"""The API functions' Lambda handlers fed real API Gateway REST (v1) proxy events through
Mangum, in aws mode against moto: first from the source tree, then from `sam build`'s output
with nothing but the build, the layer, the Lambda runtime's boto3 and the standard library on
the path (no torch, transformers or llama_cpp)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import REPO, load_event, mint_rs256, run_handler

pytestmark = pytest.mark.infra

FUNCTIONS = {  # logical id -> (code dir, handler module)
    "ModelsFunction": ("functions/models", "models_fn"),
    "AdaptersFunction": ("functions/adapters", "adapters_fn"),
    "QueryFunction": ("functions/query", "query_fn"),
    "MonitoringFunction": ("functions/monitoring", "monitoring_fn"),
    "DispatchFunction": ("functions/dispatch", "dispatch_fn"),
}

# event file -> (function, expected status, expected problem type slug or None)
CASES = {
    "apigw_rest_health_no_token.json": ("MonitoringFunction", 401, "unauthorized"),
    "apigw_rest_stats_no_token.json": ("MonitoringFunction", 401, "unauthorized"),
    "apigw_rest_list_models.json": ("ModelsFunction", 200, None),
    "apigw_rest_get_model_missing.json": ("ModelsFunction", 404, "not-found"),
    "apigw_rest_create_adapter_invalid_json.json": ("AdaptersFunction", 400, "bad-request"),
    "apigw_rest_adapter_status_missing.json": ("QueryFunction", 404, "not-found"),
}


def event_with_token(name: str, token: str) -> dict[str, Any]:
    text = json.dumps(load_event(name)).replace("{{TOKEN}}", token)
    return json.loads(text)


def body_of(response: dict[str, Any]) -> Any:
    raw = response.get("body") or ""
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw) if raw else None


def header(response: dict[str, Any], name: str) -> str | None:
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name.lower():
            return value
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name.lower():
            return values[0]
    return None


def check_cases(results_by_function: dict[str, list[dict[str, Any]]],
                names_by_function: dict[str, list[str]]) -> None:
    for function, names in names_by_function.items():
        for name, response in zip(names, results_by_function[function], strict=True):
            _, status, slug = CASES[name]
            body = body_of(response)
            assert response["statusCode"] == status, (name, response)
            if slug is None:
                assert header(response, "content-type").startswith("application/json"), name
                continue
            assert header(response, "content-type") == "application/problem+json", name
            assert body["status"] == status and body["type"] == f"urn:lora:problem:{slug}", name
            assert {"error", "title"} <= set(body), name


def grouped(token: str) -> tuple[dict[str, list[dict]], dict[str, list[str]]]:
    events: dict[str, list[dict]] = {}
    names: dict[str, list[str]] = {}
    for name, (function, _, _) in CASES.items():
        events.setdefault(function, []).append(event_with_token(name, token))
        names.setdefault(function, []).append(name)
    return events, names


def run_all(paths_for, events, lambda_env) -> dict[str, list[dict[str, Any]]]:
    results = {}
    for function, evs in events.items():
        report = run_handler(paths_for(function), FUNCTIONS[function][1], evs, lambda_env)
        assert report["heavy"] == [], f"{function} imported {report['heavy']}"
        results[function] = report["results"]
    return results


def test_rest_events_through_mangum_from_source(lambda_env, lambda_runtime_dir, rsa_keys) -> None:
    # Given REST (v1) proxy events, When each function's handler gets them, Then Mangum turns
    # them into the app's answers: 401 problem+json without a token, data with one.
    events, names = grouped(mint_rs256(rsa_keys[0]))

    def paths(function: str) -> list[Path]:
        return [REPO / FUNCTIONS[function][0], REPO / "layers/common/python", lambda_runtime_dir,
                *site_packages()]

    check_cases(run_all(paths, events, lambda_env), names)


def site_packages() -> list[Path]:
    """This environment's packages, for the source-tree run (torch may be installed there;
    the runner reports whether the handler imported it). The build run needs none of them:
    its layer carries its own."""
    import fastapi

    return [Path(fastapi.__file__).resolve().parent.parent]


def test_list_models_answers_rate_limit_headers(lambda_env, lambda_runtime_dir, rsa_keys) -> None:
    event = event_with_token("apigw_rest_list_models.json", mint_rs256(rsa_keys[0]))
    report = run_handler([REPO / "functions/models", REPO / "layers/common/python",
                          lambda_runtime_dir, *site_packages()],
                         "models_fn", [event], lambda_env)
    response = report["results"][0]
    assert response["statusCode"] == 200
    assert isinstance(body_of(response)["models"], list)
    assert header(response, "x-ratelimit-limit") == lambda_env["LORA_RATE_LIMIT_PER_HOUR"]


# ------------------------------------------------------------------ sam build output
def built_paths(build: Path, lambda_runtime_dir: Path, function: str) -> list[Path]:
    # /var/task, /opt/python, /var/runtime
    return [build / function, build / "CommonLayer" / "python", lambda_runtime_dir]


def test_sam_build_layer_layout(sam_build: Path) -> None:
    layer = sam_build / "CommonLayer" / "python"
    assert (layer / "lora_common" / "__init__.py").exists(), "layer must unpack to /opt/python"
    assert not (layer / "python").exists(), "layer nested one level too deep"
    for function, (_, module) in FUNCTIONS.items():
        assert (sam_build / function / f"{module}.py").exists(), function
    assert (sam_build / "WorkerStack" / "template.yaml").exists(), "nested stack is built along"


def test_sam_built_handlers_import_without_ml_packages(sam_build, lambda_runtime_dir,
                                                       lambda_env) -> None:
    for function, (_, module) in FUNCTIONS.items():
        report = run_handler(built_paths(sam_build, lambda_runtime_dir, function), module, [],
                             lambda_env)
        assert report["heavy"] == [], f"{function} imported {report['heavy']}"
        assert report["foreign"] == [], f"{function} imported from outside the build"


def test_sam_built_handlers_answer_rest_events(sam_build, lambda_runtime_dir, lambda_env,
                                               rsa_keys) -> None:
    events, names = grouped(mint_rs256(rsa_keys[0]))
    results = run_all(lambda f: built_paths(sam_build, lambda_runtime_dir, f), events,
                      lambda_env)
    check_cases(results, names)
