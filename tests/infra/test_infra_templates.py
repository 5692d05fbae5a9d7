"""template.yaml and infra/worker.yaml: linters, and the rules the templates must keep."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import REPO, tool_env

pytestmark = pytest.mark.infra

API_FUNCTIONS = ("ModelsFunction", "AdaptersFunction", "QueryFunction", "MonitoringFunction")


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items()
            if v["Type"] == "AWS::Serverless::Function"}


def statements(fn: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for policy in fn["Properties"].get("Policies", []):
        assert isinstance(policy, dict) and "Statement" in policy, (
            "policies are explicit statements (scoped resources), not managed policies")
        out += policy["Statement"]
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------ linters
def test_cfn_lint_passes_on_both_templates() -> None:
    exe = Path(sys.executable).parent / "cfn-lint"
    cmd = [str(exe)] if exe.exists() else [shutil.which("cfn-lint") or "cfn-lint"]
    proc = subprocess.run([*cmd, "template.yaml", "infra/worker.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sam_validate_lint_passes(sam: str) -> None:
    proc = subprocess.run([sam, "validate", "--lint", "--template-file", "template.yaml"],
                          cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ queue / dispatch
def test_queue_visibility_timeout_is_at_least_six_dispatch_timeouts(template) -> None:
    # Given the dispatch function's timeout, When SQS hides a received message, Then it stays
    # hidden for 6x that, so no second invocation sees a message still being dispatched.
    res = template["Resources"]
    timeout = res["DispatchFunction"]["Properties"]["Timeout"]
    assert res["TrainingQueue"]["Properties"]["VisibilityTimeout"] >= 6 * timeout


def test_dispatch_subscribes_to_training_queue_with_partial_batch_failures(template) -> None:
    events = template["Resources"]["DispatchFunction"]["Properties"]["Events"]
    sqs = [e["Properties"] for e in events.values() if e["Type"] == "SQS"]
    assert len(sqs) == 1
    assert sqs[0]["Queue"] == {"Fn::GetAtt": ["TrainingQueue", "Arn"]}
    assert sqs[0]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_training_queue_dead_letters(template) -> None:
    redrive = template["Resources"]["TrainingQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["TrainingDeadLetterQueue", "Arn"]}
    assert 1 < redrive["maxReceiveCount"] <= 10


# ------------------------------------------------------------------ storage stays as declared
def test_storage_keeps_logical_ids_and_protections(template) -> None:
    res = template["Resources"]
    for name in ("Table", "Bucket", "TrainingQueue", "TrainingDeadLetterQueue"):
        assert name in res, name
    for name in ("Table", "Bucket"):
        assert res[name]["DeletionPolicy"] == res[name]["UpdateReplacePolicy"] == "Retain"
    table = res["Table"]["Properties"]
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    bucket = res["Bucket"]["Properties"]
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]


# ------------------------------------------------------------------ functions
def test_every_function_uses_the_layer_and_python311(template) -> None:
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.11"
    assert glob["Layers"] == [{"Ref": "CommonLayer"}]
    layer = template["Resources"]["CommonLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"]["BuildMethod"] == "python3.11"
    # SAM copies ContentUri into <layer>/python/, so ContentUri must be the directory that
    # *contains* lora_common (otherwise Lambda would see /opt/python/python/lora_common).
    content = REPO / layer["Properties"]["ContentUri"]
    assert (content / "lora_common" / "__init__.py").exists()
    assert (content / "requirements.txt").exists()


def test_api_functions_time_out_within_the_gateway_limit(template) -> None:
    for name in API_FUNCTIONS:
        assert template["Resources"][name]["Properties"]["Timeout"] <= 29, name


def test_environment_variables_are_settings_fields(template) -> None:
    """A typo in a LORA_* name would be silently ignored (extra='ignore'): catch it here."""
    from dispatch_fn import DispatchSettings
    from lora_common.settings import Settings

    api_fields = set(Settings.model_fields)
    glob = template["Globals"]["Function"]["Environment"]["Variables"]
    for name, fn in functions(template).items():
        env = dict(glob)
        env.update(fn["Properties"].get("Environment", {}).get("Variables", {}))
        fields = set(DispatchSettings.model_fields) if name == "DispatchFunction" else api_fields
        for var in env:
            if name == "DispatchFunction" and var.removeprefix("LORA_").lower() in api_fields:
                continue  # shared Globals the dispatch function does not read
            assert var.startswith("LORA_") and var.removeprefix("LORA_").lower() in fields, (
                f"{name}: {var} is not a settings field")


def test_worker_environment_variables_are_settings_fields(worker_template) -> None:
    from gpu_worker.runtime import TrainerSettings
    from gpu_worker.serving.settings import WorkerSettings
    from lora_common.settings import Settings

    worker_fields = set(WorkerSettings.model_fields) | set(TrainerSettings.model_fields)

    res = worker_template["Resources"]
    envs = res["TrainingJobDefinition"]["Properties"]["ContainerProperties"]["Environment"]
    envs += res["ServingTaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    for entry in envs:
        var = entry["Name"]
        if var.startswith("AWS_"):
            continue
        if var.startswith("LORA_WORKER_"):
            assert var.removeprefix("LORA_WORKER_").lower() in worker_fields, var
        else:
            assert var.removeprefix("LORA_").lower() in Settings.model_fields, var


def test_iam_statements_are_scoped(template) -> None:
    """No wildcard actions, and table/bucket/queue/Batch actions only on their own ARNs."""
    for name, fn in functions(template).items():
        for st in statements(fn):
            for action in as_list(st["Action"]):
                assert "*" not in action, f"{name}: wildcard action {action}"
            resources = json.dumps(as_list(st["Resource"]))
            assert '"*"' not in resources, f"{name}: statement {st.get('Sid')} on every resource"
            actions = as_list(st["Action"])
            if any(a.startswith("dynamodb:") for a in actions):
                assert "Table" in resources, (name, st)
            if any(a.startswith("s3:") for a in actions):
                assert "Bucket" in resources, (name, st)
            if any(a.startswith("sqs:") for a in actions):
                assert "TrainingQueue" in resources, (name, st)
            if any(a.startswith("batch:") for a in actions):
                assert "JobQueueArn" in resources and "JobDefinitionArn" in resources


def test_only_the_adapters_function_enqueues_and_only_dispatch_submits(template) -> None:
    for name, fn in functions(template).items():
        actions = {a for st in statements(fn) for a in as_list(st["Action"])}
        assert ("sqs:SendMessage" in actions) == (name == "AdaptersFunction"), name
        assert ("batch:SubmitJob" in actions) == (name == "DispatchFunction"), name


def test_worker_calling_functions_join_the_vpc_with_the_worker(template) -> None:
    res = template["Resources"]
    for name in ("QueryFunction", "MonitoringFunction"):
        vpc = res[name]["Properties"]["VpcConfig"]["Fn::If"]
        assert vpc[0] == "WorkerEnabled"
        assert vpc[1]["SecurityGroupIds"] == [
            {"Fn::GetAtt": ["WorkerStack", "Outputs.WorkerClientSecurityGroupId"]}]
        assert vpc[2] == {"Ref": "AWS::NoValue"}


# ------------------------------------------------------------------ gateway responses
REQUIRED_GATEWAY_RESPONSES = {
    "THROTTLED": 429, "REQUEST_TOO_LARGE": 413, "INTEGRATION_TIMEOUT": 504,
    "MISSING_AUTHENTICATION_TOKEN": 404, "RESOURCE_NOT_FOUND": 404,
    "DEFAULT_4XX": 400, "DEFAULT_5XX": 500,
}


def test_gateway_errors_are_problem_json(template) -> None:
    """Given an error the gateway raises itself, Then the client still gets problem+json with
    the app's fields, and the body's status equals the HTTP status."""
    from lora_common.problem import PROBLEM_JSON, TYPE_BASE

    responses = template["Resources"]["Api"]["Properties"]["GatewayResponses"]
    assert REQUIRED_GATEWAY_RESPONSES.items() <= {
        k: v["StatusCode"] for k, v in responses.items()}.items()
    for kind, spec in responses.items():
        assert spec["ResponseParameters"]["Headers"]["Content-Type"] == f"'{PROBLEM_JSON}'"
        body_template = spec["ResponseTemplates"]["application/json"]
        # $context.error.messageString is a JSON string literal once rendered.
        rendered = json.loads(body_template.replace(
            "$context.error.messageString", json.dumps("gateway message")))
        assert set(rendered) == {"type", "title", "status", "error", "details"}, kind
        assert rendered["status"] == spec["StatusCode"], kind
        assert rendered["type"].startswith(TYPE_BASE), kind
        assert "$context" not in json.dumps(rendered), f"{kind}: unescaped variable in body"


# ------------------------------------------------------------------ nested worker stack
def test_worker_stack_parameters_match(template, worker_template) -> None:
    stack = template["Resources"]["WorkerStack"]
    assert stack["Type"] == "AWS::CloudFormation::Stack"
    assert stack["Condition"] == "WorkerEnabled"
    assert (REPO / stack["Properties"]["TemplateURL"]).resolve() == REPO / "infra" / "worker.yaml"
    passed = set(stack["Properties"]["Parameters"])
    declared = worker_template["Parameters"]
    assert passed <= set(declared), passed - set(declared)
    required = {k for k, v in declared.items() if "Default" not in v}
    assert required <= passed, required - passed


def test_parent_reads_only_outputs_the_worker_stack_has(template, worker_template) -> None:
    text = json.dumps(template)
    used = set(re.findall(r'"WorkerStack", "Outputs\.(\w+)"', text))
    assert used, "the parent reads the worker stack's outputs"
    assert used <= set(worker_template["Outputs"]), used - set(worker_template["Outputs"])


def test_outputs(template) -> None:
    assert {"ApiUrl", "BucketName", "TableName", "QueueUrl"} <= set(template["Outputs"])


def test_batch_job_definition_requests_a_gpu(worker_template) -> None:
    props = worker_template["Resources"]["TrainingJobDefinition"]["Properties"]
    reqs = {r["Type"]: r["Value"] for r in props["ContainerProperties"]["ResourceRequirements"]}
    assert reqs["GPU"] == "1"
    ce = worker_template["Resources"]["TrainingComputeEnvironment"]["Properties"]
    assert ce["ComputeResources"]["MinvCpus"] == 0, "training scales to zero when idle"
    task = worker_template["Resources"]["ServingTaskDefinition"]["Properties"]
    gpu = task["ContainerDefinitions"][0]["ResourceRequirements"]
    assert {"Type": "GPU", "Value": "1"} in gpu
