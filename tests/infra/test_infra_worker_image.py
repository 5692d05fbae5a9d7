"""The GPU worker image, the Batch job definition and the ECS task run the commands the worker's
CLI (gpu_worker/cli.py) has, the same ones the local stack and the tests run; and the image's
pins agree with the project's."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import REPO

pytestmark = pytest.mark.infra

DOCKERFILE = REPO / "gpu_worker" / "Dockerfile"


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """Instructions (KEYWORD, arguments) per stage; continuations joined, comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM" and stages[-1] and any(k == "FROM" for k, _ in stages[-1]):
            stages.append([])
        stages[-1].append((keyword, args.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def exec_form(keyword: str) -> list[str]:
    values = [args for k, args in final_stage() if k == keyword]
    assert values, f"final stage has no {keyword}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{keyword} must be exec form (JSON array)"
    return parsed


def build_args() -> dict[str, str]:
    out = {}
    for stage in dockerfile_stages():
        for keyword, args in stage:
            if keyword == "ARG" and "=" in args:
                name, _, value = args.partition("=")
                out[name] = value.strip('"')
    return out


def parse_cli(argv: list[str]) -> Any:
    from gpu_worker.cli import build_parser

    return build_parser().parse_args(argv)


def test_entrypoint_is_the_worker_cli_and_cmd_serves() -> None:
    assert exec_form("ENTRYPOINT") == ["python", "-m", "gpu_worker"]
    assert parse_cli(exec_form("CMD")).command == "serve"


def test_batch_job_definition_runs_train_for_the_submitted_job(worker_template) -> None:
    props = worker_template["Resources"]["TrainingJobDefinition"]["Properties"]
    command = props["ContainerProperties"]["Command"]
    refs = [part.removeprefix("Ref::") for part in command if part.startswith("Ref::")]
    # Every placeholder has a default, and the dispatch function sends exactly these names.
    assert set(refs) == set(props["Parameters"]) == set(submitted_parameters("job_x"))
    resolved = [submitted_parameters("job_x").get(p.removeprefix("Ref::"), p)
                if p.startswith("Ref::") else p for p in command]
    args = parse_cli(resolved)
    assert (args.command, args.job_id) == ("train", "job_x")


def submitted_parameters(job_id: str) -> dict[str, str]:
    from lora_common.batch import BatchSubmitter

    class Recorder:
        def submit_job(self, **kwargs: Any) -> dict[str, str]:
            self.kwargs = kwargs
            return {"jobId": "b-1"}

    client = Recorder()
    BatchSubmitter("queue", "definition", client).submit_training(job_id)
    return client.kwargs["parameters"]


def test_ecs_task_serves_on_the_port_the_alb_targets(worker_template) -> None:
    from gpu_worker.serving.settings import WorkerSettings

    res = worker_template["Resources"]
    container = res["ServingTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert parse_cli(container["Command"]).command == "serve"
    port = container["PortMappings"][0]["ContainerPort"]
    assert port == res["ServingTargetGroup"]["Properties"]["Port"]
    assert port == WorkerSettings.model_fields["port"].default
    assert ("EXPOSE", str(port)) in final_stage()
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["LORA_WORKER_HOST"] == "0.0.0.0", "the ALB reaches the task's ENI, not loopback"
    health = res["ServingTargetGroup"]["Properties"]["HealthCheckPath"]
    assert health == "/internal/health"


def test_local_stack_runs_the_same_cli() -> None:
    # The local stack starts `python -m gpu_worker serve|poll`; `poll` runs `train`'s entrypoint.
    text = (REPO / "devstack" / "stack.py").read_text()
    assert '"-m", "gpu_worker"' in text
    for sub in ("serve", "poll", "train"):
        argv = [sub, "--job-id", "j"] if sub == "train" else [sub]
        assert parse_cli(argv).command == sub


def test_image_is_cuda_python311_nonroot() -> None:
    stages = dockerfile_stages()
    froms = [args for stage in stages for k, args in stage if k == "FROM"]
    args = build_args()
    cuda = args["CUDA_VERSION"]
    assert cuda.startswith("12."), cuda
    assert froms[0].startswith("nvidia/cuda:${CUDA_VERSION}-devel-")
    assert froms[-1].startswith("nvidia/cuda:${CUDA_VERSION}-runtime-")
    users = [a for k, a in final_stage() if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the worker does not run as root"
    text = DOCKERFILE.read_text()
    assert "python3.11" in text
    assert "-DGGML_CUDA=on" in text and "-DGGML_NATIVE=OFF" in text


def test_image_pins_agree_with_the_project() -> None:
    args = build_args()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_pin = next(d for d in project["optional-dependencies"]["worker"]
                     if d.startswith("torch"))
    assert torch_pin == f"torch=={args['TORCH_VERSION']}"
    makefile = (REPO / "Makefile").read_text()
    llama = re.search(r"^LLAMA_VERSION\s*:=\s*(\S+)", makefile, re.M)
    assert llama and llama.group(1) == args["LLAMA_CPP_PYTHON_VERSION"]


def test_gpu_requirements_match_the_worker_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    image = {line.split(";")[0].strip() for line in
             (REPO / "gpu_worker" / "requirements-gpu.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    # torch is installed from the CUDA index, the model package is not needed in the image.
    wanted = {d for d in project["optional-dependencies"]["worker"]
              if not d.startswith(("torch", "gemma3-"))}
    assert wanted <= image, wanted - image


# ------------------------------------------------------------------ build context
def dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parents) decides."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        regex = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pat == "**" or any(re.match(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_copied_sources_exist_and_are_in_the_build_context() -> None:
    for stage in dockerfile_stages():
        for keyword, args in stage:
            if keyword != "COPY" or args.startswith("--from"):
                continue
            for src in args.split()[:-1]:
                assert (REPO / src).exists(), src
                assert not dockerignore_excludes(src), f"{src} is excluded by .dockerignore"
    for private in (".venv", ".data", ".git", "tests", "functions"):
        assert dockerignore_excludes(private), f"{private} would be sent to the builder"
