"""The local API: one FastAPI app holding every function's router, built by the same factory
the Lambda functions use, so local and deployed answer the same way."""

from __future__ import annotations


def build_local_app():
    import adapters_fn
    import models_fn
    import monitoring_fn
    import query_fn
    from lora_common.problem import create_app

    return create_app([m.router for m in (models_fn, adapters_fn, query_fn, monitoring_fn)])
