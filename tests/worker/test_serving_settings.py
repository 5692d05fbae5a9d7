"""WorkerSettings: environment prefix, required fields, every field described."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpu_worker.serving.settings import WorkerSettings

pytestmark = pytest.mark.unit

REQUIRED = {
    "LORA_WORKER_MODEL_PATH": "/models/base.gguf",
    "LORA_WORKER_MODEL_ID": "gemma-3-270m",
    "LORA_WORKER_BUCKET_NAME": "lora-bucket",
}


def test_reads_prefixed_environment(monkeypatch):
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LORA_WORKER_MAX_ADAPTERS", "3")
    monkeypatch.setenv("LORA_WORKER_MAX_ADAPTER_MB", "64.5")
    s = WorkerSettings()
    assert s.model_path == "/models/base.gguf"
    assert (s.model_id, s.bucket_name) == ("gemma-3-270m", "lora-bucket")
    assert (s.max_adapters, s.max_adapter_mb) == (3, 64.5)
    assert (s.n_ctx, s.n_threads) == (2048, 2)


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_required_fields_are_required(monkeypatch, missing):
    for name, value in REQUIRED.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv(missing, raising=False)
    with pytest.raises(ValidationError):
        WorkerSettings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("LORA_WORKER_MAX_ADAPTERS", "0"), ("LORA_WORKER_N_CTX", "8"), ("LORA_WORKER_PORT", "0")],
)
def test_out_of_range_values_are_refused(monkeypatch, name, value):
    for key, val in REQUIRED.items():
        monkeypatch.setenv(key, val)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_every_field_is_described():
    assert all(field.description for field in WorkerSettings.model_fields.values())
