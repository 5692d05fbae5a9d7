"""Builds the worker's processes from their settings: the job runner (train, poll) and the
inference server (serve). The only place that turns configuration into objects."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    """Settings of the training process (`train`, `poll`); env prefix LORA_WORKER_."""

    model_config = SettingsConfigDict(env_prefix="LORA_WORKER_", extra="ignore")

    cache_dir: Path = Field(
        default=Path(".data/worker/base-cache"),
        description="Dequantized base models and converted tokenizers, keyed by file sha256, "
        "plus base model files downloaded from S3.",
    )
    work_dir: Path = Field(
        default=Path(".data/worker/jobs"),
        description="Scratch space for one job's files; removed when the job ends.",
    )
    n_threads: int = Field(default=2, ge=1, description="CPU threads for the parity check.")


def _storage():
    from lora_common.blobs import BlobStore
    from lora_common.repository import DynamoRepository
    from lora_common.settings import Settings

    settings = Settings()
    return settings, DynamoRepository(settings.table_name), BlobStore(settings.bucket_name)


def job_runner():
    from gpu_worker.jobs import JobRunner

    _, repo, blobs = _storage()
    trainer = TrainerSettings()
    return JobRunner(repo, blobs, work_dir=trainer.work_dir, cache_dir=trainer.cache_dir,
                     n_threads=trainer.n_threads)


def job_queue():
    from lora_common.jobqueue import JobQueue
    from lora_common.settings import Settings

    return JobQueue(Settings().queue_url)


def build_worker_app(settings=None):
    """Load the base model once (downloading it first when it lives in S3) and wire the
    engine, the adapter store and the routes together."""
    from gpu_worker.model_files import local_model_file
    from gpu_worker.serving.adapter_store import AdapterStore
    from gpu_worker.serving.engine import Engine
    from gpu_worker.serving.server import create_worker_app
    from gpu_worker.serving.settings import WorkerSettings
    from lora_common.blobs import BlobStore

    settings = settings or WorkerSettings()
    model_file = local_model_file(settings.model_path, settings.data_dir,
                                  BlobStore(settings.bucket_name))
    engine = Engine(
        model_file,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_batch=settings.n_batch,
        n_gpu_layers=settings.n_gpu_layers,
        max_adapters=settings.max_adapters,
        max_adapter_mb=settings.max_adapter_mb,
    )
    store = AdapterStore(settings.bucket_name, settings.data_dir)
    return create_worker_app(engine, store, settings.model_id)


def serve() -> None:
    import uvicorn

    from gpu_worker.serving.settings import WorkerSettings

    settings = WorkerSettings()
    app = build_worker_app(settings)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    finally:
        app.state.engine.close()
