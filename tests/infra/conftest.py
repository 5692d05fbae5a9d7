"""Fixtures of the infrastructure tests (defined in infra_helpers.py)."""

from infra_helpers import (  # noqa: F401 - re-exported fixtures
    lambda_env,
    lambda_runtime_dir,
    rsa_keys,
    sam,
    sam_build,
    template,
    worker_template,
)
