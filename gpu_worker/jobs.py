"""One training job, start to finish: the entrypoint AWS Batch runs and the local poller calls.

claim -> resolve and verify the base model file -> read the datasets -> train (PEFT) ->
export GGUF -> parity check -> upload files -> write manifest last -> re-verify everything in
the bucket -> flip the version to ready in one conditional transaction.

Any failure before the flip marks the version failed with the reason; nothing is ever ready
without complete, verified files, and a previous ready version keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_worker.model_files import local_model_file
from gpu_worker.training.base_cache import file_sha256
from lora_common.util import iso

log = logging.getLogger("gpu_worker.jobs")

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
# A running job whose heartbeat is older than this lost its worker (host gone, process
# killed) and is taken over by the next delivery. The runner beats every HEARTBEAT_S.
JOB_LEASE_S = 15 * 60
HEARTBEAT_S = 60
# Progress is written at most this often (seconds) so a fast loop doesn't hammer DynamoDB.
PROGRESS_INTERVAL_S = 2.0


class JobFailed(Exception):
    """A job failed for a reason the user should see in the version's details."""


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    state: str  # "succeeded" | "failed" | "skipped"
    details: str = ""
    metrics: dict[str, Any] | None = None


class JobRunner:
    """Runs training jobs against one repository and blob store.

    `model_files` turns a registered model into a local GGUF path (downloading from the
    bucket when the model lives there), so the runner can be pointed at any store.
    """

    def __init__(
        self,
        repo,
        blobs,
        *,
        work_dir: Path,
        cache_dir: Path,
        n_threads: int = 2,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.repo = repo
        self.blobs = blobs
        self.work_dir = Path(work_dir)
        self.cache_dir = Path(cache_dir)
        self.n_threads = n_threads
        self.clock = clock
        self._sleep = sleep

    # -- public -------------------------------------------------------------------------

    def run(self, job_id: str, *, wait_if_running: bool = False) -> JobOutcome:
        """Claim and run one job. A job another worker holds is skipped, or with
        `wait_if_running` (AWS Batch's retry of an attempt whose host was lost) waited for
        until it finishes or its lease runs out and it can be taken over."""
        job = self.repo.claim_job(job_id, self.clock(), stale_after=JOB_LEASE_S)
        deadline = time.monotonic() + JOB_LEASE_S + 2 * HEARTBEAT_S
        while job is None and wait_if_running and time.monotonic() < deadline:
            current = self.repo.get_job(job_id)
            if current is None or current.get("state") != "running":
                break
            log.info("job %s is held by another worker; waiting for its lease", job_id)
            self._sleep(HEARTBEAT_S)
            job = self.repo.claim_job(job_id, self.clock(), stale_after=JOB_LEASE_S)
        if job is None:
            # Duplicate delivery, or a job that already ran: never train twice.
            log.info("job %s is not claimable; skipping", job_id)
            return JobOutcome(job_id, "skipped", "job is not queued")
        log.info("job %s claimed: %s %s", job_id, job["adapter_id"], job["version"])
        # Files of this run go under a prefix of their own, so a run that lost its lease (or
        # belongs to a deleted and re-created adapter) can never overwrite a ready version's.
        from lora_common import keys

        run_prefix = (keys.version_prefix(job["tenant"], job["adapter_id"], job["version"])
                      + f"run-{uuid.uuid4().hex[:12]}/")
        beating = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(job_id, beating), daemon=True)
        heart.start()
        try:
            metrics = self._train_and_publish(job, run_prefix)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the version's reason
            reason = str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", job_id)
            self._discard(run_prefix)
            try:
                self.repo.mark_version_failed(job, reason, self.clock())
            except Exception:  # noqa: BLE001 - e.g. the adapter was deleted meanwhile
                log.exception("job %s: recording the failure failed", job_id)
            return JobOutcome(job_id, "failed", reason)
        finally:
            beating.set()
            heart.join(timeout=5)
        return JobOutcome(job_id, "succeeded", metrics=metrics)

    def _heartbeat(self, job_id: str, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                self.repo.record_job_heartbeat(job_id, self.clock())
            except Exception:  # noqa: BLE001 - a missed beat only shortens the lease
                log.warning("job %s: heartbeat failed", job_id, exc_info=True)

    def _discard(self, prefix: str) -> None:
        try:
            self.blobs.delete_prefix(prefix)
        except Exception:  # noqa: BLE001 - leftovers of a failed run are garbage, not state
            log.warning("could not delete %s", prefix, exc_info=True)

    # -- steps --------------------------------------------------------------------------

    def _train_and_publish(self, job: dict, prefix: str) -> dict[str, Any]:
        from gpu_worker.training.base_cache import load_base
        from gpu_worker.training.data import record_prompt_completion
        from gpu_worker.training.export import export_gguf
        from gpu_worker.training.parity import check_parity
        from gpu_worker.training.trainer import TrainConfig, train_lora

        model_path = self._model_file(job["base_model"])
        records = self._records(job)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix=f"{job['job_id']}-") as tmp:
            tmp_path = Path(tmp)
            base = load_base(model_path, self.cache_dir)
            init_dir = self._parent_weights(job, tmp_path / "parent")
            config = TrainConfig.from_settings(
                dict(job.get("training") or {}),
                rank=int(job["rank"]),
                alpha=float(job["alpha"]),
                samples=int(job["samples"]) if job.get("samples") else None,
            )
            peft_dir = tmp_path / "peft"
            result = train_lora(
                base,
                records,
                config,
                peft_dir,
                init_adapter_dir=init_dir,
                progress=self._progress_writer(job["job_id"]),
            )
            gguf_path = tmp_path / "adapter.gguf"
            export_gguf(peft_dir, base, gguf_path)
            # Parity on a training example: there the adapter's effect is largest, so a wrong
            # export cannot hide behind a prompt the adapter barely changes.
            prompt, completion = record_prompt_completion(records[0], base.tokenizer,
                                                          base.architecture)
            parity = check_parity(base, peft_dir, model_path, gguf_path,
                                  prompt=prompt + completion, n_threads=self.n_threads)
            if not parity.passed:
                raise JobFailed(
                    "GGUF export does not reproduce the trained adapter in llama.cpp "
                    f"(parity check failed: {'; '.join(parity.reasons)})"
                )
            metrics = result.metrics()
            artifacts = self._publish(job, prefix, base, peft_dir, gguf_path, metrics, parity)
        self.repo.mark_version_ready(job, artifacts, metrics, self.clock())
        log.info("job %s succeeded: %s", job["job_id"], metrics)
        return metrics

    def _model_file(self, model_id: str) -> Path:
        """The base model's local GGUF path, its header checked against the registration."""
        from lora_common import gguf_header
        from lora_common.services import models

        model = self.repo.get_model(model_id)
        if model is None:
            raise JobFailed(f"Base model {model_id!r} is no longer registered")
        path = local_model_file(model["gguf_path"], self.cache_dir, self.blobs)
        if not path.is_file():
            self.repo.set_model_file_status(model_id, "unverified", {"error": "file not found"})
            raise JobFailed(f"Base model file for {model_id!r} not found: {model['gguf_path']}")
        try:
            info = gguf_header.read_header(gguf_header.file_reader(str(path)))
        except gguf_header.GGUFFormatError as exc:
            self.repo.set_model_file_status(model_id, "invalid", {"error": str(exc)})
            raise JobFailed(f"Base model file for {model_id!r} is not GGUF: {exc}") from exc
        bad = models.contradictions(model, info)
        if bad:
            reason = "; ".join(f"{b['field']}: {b['reason']}" for b in bad)
            self.repo.set_model_file_status(model_id, "invalid", {"error": reason})
            raise JobFailed(f"Base model file for {model_id!r} contradicts its registration: "
                            f"{reason}")
        if model.get("file_status") != "verified":
            self.repo.set_model_file_status(model_id, "verified", models.file_info(info))
        return path

    def _records(self, job: dict) -> list[dict]:
        records: list[dict] = []
        for dataset_id in job["dataset_ids"]:
            dataset = self.repo.get_dataset(job["tenant"], dataset_id)
            if dataset is None:
                raise JobFailed(f"Dataset {dataset_id!r} was deleted before training started")
            body = self.blobs.get_bytes(dataset["s3_key"]).decode("utf-8")
            records.extend(json.loads(line) for line in body.split("\n") if line.strip())
        if not records:
            raise JobFailed("The training data has no records")
        return records

    def _parent_weights(self, job: dict, into: Path) -> Path | None:
        parent = job.get("parent_version")
        if not parent:
            return None
        version = self.repo.get_version(job["tenant"], job["adapter_id"], parent)
        if version is None or not version.get("artifact_prefix"):
            raise JobFailed(f"Parent version {parent} has no stored files to continue from")
        into.mkdir(parents=True)
        manifest = json.loads(self.blobs.get_bytes(version["manifest_key"]))
        for name in PEFT_FILES:
            target = into / name
            self.blobs.download_file(f"{version['artifact_prefix']}peft/{name}", str(target))
            if file_sha256(target) != manifest["files"][f"peft/{name}"]["sha256"]:
                raise JobFailed(f"Parent version {parent}'s {name} does not match its manifest")
        return into

    def _progress_writer(self, job_id: str) -> Callable[[int, int, float], None]:
        last = [0.0]

        def write(step: int, total: int, loss: float) -> None:
            now = time.monotonic()
            if step < total and now - last[0] < PROGRESS_INTERVAL_S:
                return
            last[0] = now
            value = float(loss)  # a diverging run reports inf/nan, which DynamoDB cannot store
            self.repo.record_job_progress(job_id, step, total,
                                          value if math.isfinite(value) else None, self.clock())

        return write

    def _publish(self, job, prefix: str, base, peft_dir: Path, gguf_path: Path, metrics,
                 parity) -> dict:
        """Upload files, then the manifest (last), then re-verify all of it from the bucket."""
        files: dict[str, Path] = {f"peft/{n}": peft_dir / n for n in PEFT_FILES}
        files["adapter.gguf"] = gguf_path
        entries = {}
        for rel, path in files.items():
            entries[rel] = {"sha256": file_sha256(path), "size": path.stat().st_size}
            self.blobs.upload_file(path, prefix + rel)
        adapter_config = json.loads((peft_dir / "adapter_config.json").read_text())
        manifest = {
            "format": 1,
            "tenant": job["tenant"],
            "adapter_id": job["adapter_id"],
            "version": job["version"],
            "job_id": job["job_id"],
            "base_model": job["base_model"],
            "base_model_sha256": base.sha256,
            "architecture": base.architecture,
            "rank": adapter_config.get("r"),
            "alpha": adapter_config.get("lora_alpha"),
            "use_rslora": bool(adapter_config.get("use_rslora")),
            "target_modules": sorted(adapter_config.get("target_modules") or []),
            "parent_version": job.get("parent_version"),
            "files": entries,
            "metrics": metrics,
            "parity": parity.to_dict(),
            "created_at": iso(self.clock()),
        }
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        manifest_key = prefix + "manifest.json"
        self.blobs.put_bytes(manifest_key, manifest_bytes, content_type="application/json")
        manifest_sha = verify_published(self.blobs, prefix, manifest_bytes)
        return {
            "artifact_prefix": prefix,
            "manifest_key": manifest_key,
            "manifest_sha256": manifest_sha,
            "gguf_key": prefix + "adapter.gguf",
            "gguf_sha256": entries["adapter.gguf"]["sha256"],
            "gguf_size": entries["adapter.gguf"]["size"],
        }


def verify_published(blobs, prefix: str, expected_manifest: bytes) -> str:
    """Re-read the manifest and every file it lists from the bucket; raise on any mismatch.

    Returns the manifest's sha256. This is what makes `ready` mean "complete, verified files".
    """
    stored = blobs.get_bytes(prefix + "manifest.json")
    if stored != expected_manifest:
        raise JobFailed("The stored manifest differs from the one written")
    manifest = json.loads(stored)
    for rel, entry in manifest["files"].items():
        data = blobs.get_bytes(prefix + rel)
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise JobFailed(f"Stored file {rel} does not match its manifest checksum")
    return hashlib.sha256(stored).hexdigest()
