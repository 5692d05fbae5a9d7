"""Every DynamoDB key and S3 key is built here and only here (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import hashlib

MODELS_GSI = "MODELS"


def model(model_id: str) -> dict[str, str]:
    return {"pk": f"MODEL#{model_id}", "sk": "MODEL"}


def model_index(model_id: str) -> dict[str, str]:
    return {"gsi1pk": MODELS_GSI, "gsi1sk": model_id}


def dataset(tenant: str, dataset_id: str) -> dict[str, str]:
    return {"pk": f"T#{tenant}#DATASET#{dataset_id}", "sk": "DATASET"}


def datasets_gsi(tenant: str) -> str:
    return f"T#{tenant}#DATASETS"


def dataset_index(tenant: str, dataset_id: str) -> dict[str, str]:
    return {"gsi1pk": datasets_gsi(tenant), "gsi1sk": dataset_id}


def adapter_pk(tenant: str, adapter_id: str) -> str:
    return f"T#{tenant}#ADAPTER#{adapter_id}"


def adapter(tenant: str, adapter_id: str) -> dict[str, str]:
    return {"pk": adapter_pk(tenant, adapter_id), "sk": "ADAPTER"}


def adapters_gsi(tenant: str) -> str:
    return f"T#{tenant}#ADAPTERS"


def base_gsi(model_id: str) -> str:
    return f"BASE#{model_id}"


def adapter_index(tenant: str, adapter_id: str, base_model: str) -> dict[str, str]:
    return {
        "gsi1pk": adapters_gsi(tenant),
        "gsi1sk": adapter_id,
        "gsi2pk": base_gsi(base_model),
        "gsi2sk": f"{tenant}#{adapter_id}",
    }


VERSION_PREFIX = "VERSION#"


def version(tenant: str, adapter_id: str, version_name: str) -> dict[str, str]:
    return {"pk": adapter_pk(tenant, adapter_id), "sk": f"{VERSION_PREFIX}{version_name}"}


def job(job_id: str) -> dict[str, str]:
    return {"pk": f"JOB#{job_id}", "sk": "JOB"}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def rate(token_digest: str, window: int) -> dict[str, str]:
    return {"pk": f"RATE#{token_digest}#{window}", "sk": "RATE"}


def audit(tenant: str, audit_id: str) -> dict[str, str]:
    return {"pk": f"T#{tenant}#AUDIT#{audit_id}", "sk": "AUDIT"}


def audit_index(tenant: str, audit_id: str) -> dict[str, str]:
    return {"gsi1pk": f"T#{tenant}#AUDITS", "gsi1sk": audit_id}


# --- S3 ---------------------------------------------------------------------------------


def dataset_object(tenant: str, dataset_id: str) -> str:
    return f"datasets/{tenant}/{dataset_id}/data.jsonl"


def dataset_prefix(tenant: str, dataset_id: str) -> str:
    return f"datasets/{tenant}/{dataset_id}/"


def adapter_prefix(tenant: str, adapter_id: str) -> str:
    return f"adapters/{tenant}/{adapter_id}/"


def version_prefix(tenant: str, adapter_id: str, version_name: str) -> str:
    return f"adapters/{tenant}/{adapter_id}/{version_name}/"


def version_object(tenant: str, adapter_id: str, version_name: str, relative: str) -> str:
    """relative: 'peft/adapter_config.json', 'peft/adapter_model.safetensors',
    'adapter.gguf' or 'manifest.json'."""
    return version_prefix(tenant, adapter_id, version_name) + relative
