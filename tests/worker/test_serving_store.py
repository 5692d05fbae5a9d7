"""AdapterStore against a moto S3 server over the real AWS wire protocol."""

from __future__ import annotations

import hashlib

import pytest

from gpu_worker.serving.adapter_store import AdapterStore
from gpu_worker.serving.errors import (
    AdapterChecksumError,
    AdapterFileNotFoundError,
    InvalidRequestError,
    StorageUnavailableError,
)

pytestmark = pytest.mark.integration

PAYLOAD = b"GGUF" + bytes(range(256)) * 64
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def store(serve_s3, tmp_path):
    return AdapterStore(serve_s3["bucket"], tmp_path / "cache")


def put(serve_s3, key, body=PAYLOAD):
    serve_s3["client"].put_object(Bucket=serve_s3["bucket"], Key=key, Body=body)


def test_given_object_when_resolved_then_file_is_cached_by_sha(serve_s3, store, tmp_path):
    put(serve_s3, "adapters/t1/a1/v1.0/adapter.gguf")
    path = store.resolve("adapters/t1/a1/v1.0/adapter.gguf", SHA)
    assert path == tmp_path / "cache" / f"{SHA}.gguf"
    assert path.read_bytes() == PAYLOAD


def test_given_cached_file_when_resolved_again_then_bucket_is_not_read(serve_s3, store):
    key = "adapters/t1/a1/v1.1/adapter.gguf"
    put(serve_s3, key)
    first = store.resolve(key, SHA)
    serve_s3["client"].delete_object(Bucket=serve_s3["bucket"], Key=key)
    assert store.resolve(key, SHA) == first


def test_when_sha256_differs_then_file_is_refused_and_not_cached(serve_s3, store, tmp_path):
    key = "adapters/t1/a1/v2.0/adapter.gguf"
    put(serve_s3, key, PAYLOAD + b"tampered")
    with pytest.raises(AdapterChecksumError):
        store.resolve(key, SHA)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial or wrong file left


def test_when_object_is_missing_then_not_found(serve_s3, store):
    with pytest.raises(AdapterFileNotFoundError):
        store.resolve("adapters/nope/nope/v1.0/adapter.gguf", SHA)


@pytest.mark.parametrize("sha", ["", "abc", "g" * 64, SHA + "0"])
def test_when_sha256_is_malformed_then_invalid_request(store, sha):
    with pytest.raises(InvalidRequestError):
        store.resolve("adapters/t/a/v1.0/adapter.gguf", sha)


def test_when_bucket_is_unreachable_then_storage_unavailable(tmp_path):
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # discard port: connection refused
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    store = AdapterStore("bucket", tmp_path / "cache", s3_client=client)
    with pytest.raises(StorageUnavailableError):
        store.resolve("adapters/t/a/v1.0/adapter.gguf", SHA)
