"""Response models of the public API (the seed's shapes plus documented extensions)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Page(BaseModel):
    total: int
    limit: int
    offset: int


class ModelRegistered(BaseModel):
    model_id: str
    status: str
    timestamp: str
    file_status: str


class ModelDetail(BaseModel):
    model_id: str
    architecture: str
    parameter_count: int | None
    quantization: str | None
    gguf_path: str | None
    description: str | None
    created_at: str
    metadata: dict[str, Any]
    file_status: str
    file_info: dict[str, Any]


class ModelSummary(BaseModel):
    model_id: str
    architecture: str
    parameter_count: int | None
    quantization: str | None
    file_status: str


class ModelList(Page):
    models: list[ModelSummary]


class TrainingAccepted(BaseModel):
    adapter_id: str
    version: str
    status: str
    job_id: str


class VersionInfo(BaseModel):
    version: str
    status: str
    metrics: dict[str, Any]
    parent_version: str | None
    dataset_ids: list[str]
    samples: int | None
    job_id: str | None
    error: str | None
    gguf_sha256: str | None
    gguf_size: int | None
    created_at: str | None
    ready_at: str | None


class AdapterDetail(BaseModel):
    adapter_id: str
    base_model: str
    version: str
    status: str
    metrics: dict[str, Any]
    created_at: str
    updated_at: str | None
    serving_version: str | None
    task: str | None
    description: str | None
    rank: int
    alpha: int
    training: dict[str, Any]
    job_id: str | None
    error: str | None
    versions: list[VersionInfo]


class AdapterSummary(BaseModel):
    adapter_id: str
    base_model: str
    status: str
    version: str
    serving_version: str | None
    is_loaded: bool


class AdapterList(Page):
    adapters: list[AdapterSummary]


class JobDetail(BaseModel):
    job_id: str
    adapter_id: str
    version: str
    base_model: str | None
    state: str
    step: int
    total_steps: int | None
    progress: float
    loss: float | None
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None


class DatasetDetail(BaseModel):
    dataset_id: str
    description: str | None = None
    records: int
    format: str
    size_bytes: int
    sha256: str
    created_at: str


class DatasetList(Page):
    datasets: list[DatasetDetail]


class QueryResponse(BaseModel):
    response: str
    model_id: str
    adapter_id: str | None
    version: str | None
    tokens_used: int
    prompt_tokens: int
    completion_tokens: int
    inference_time_ms: int
    audit_id: str


class LoadResponse(BaseModel):
    adapter_id: str
    status: str
    load_time_ms: int
    version: str
    memory_usage_mb: float | None = None
    cache_hit: bool | None = None


class UnloadResponse(BaseModel):
    adapter_id: str
    status: str
    version: str | None


class AdapterStatus(BaseModel):
    adapter_id: str
    is_loaded: bool
    memory_usage_mb: float
    last_used: str | None
    version: str | None
    adapter_status: str | None


class Stats(BaseModel):
    total_adapters: int
    loaded_adapters: int
    cache_hit_rate: float
    total_inferences: int
    avg_load_time_ms: float
    uptime_seconds: int
    memory_usage_mb: float | None = None


class Health(BaseModel):
    status: str
    storage: str
    manager: str
    training: str
    checks_passed: int
    checks_failed: int
    errors: dict[str, str] | None = None
