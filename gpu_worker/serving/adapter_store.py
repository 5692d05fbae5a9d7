"""Resolves an adapter's GGUF object in the bucket to a verified file on local disk.

Files are cached under `<cache_dir>/<sha256>.gguf`. A file only ever reaches that name after
its bytes hashed to the expected sha256 (written to a temporary name, hashed while
streaming, then renamed atomically), so a cached file is trusted without re-hashing and a
file whose checksum differs is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from gpu_worker.serving.errors import (
    AdapterChecksumError,
    AdapterFileNotFoundError,
    InvalidRequestError,
    StorageUnavailableError,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


class AdapterStore:
    """Downloads adapter files from one bucket into a content-addressed local cache."""

    def __init__(self, bucket_name: str, cache_dir: Path | str, s3_client: Any = None) -> None:
        self._bucket = bucket_name
        self._dir = Path(cache_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        # boto3 reads AWS_ENDPOINT_URL / AWS_DEFAULT_REGION itself, so the same code runs
        # against AWS, a local emulator or moto.
        self._s3 = s3_client if s3_client is not None else boto3.client("s3")

    def cached_path(self, sha256: str) -> Path:
        """Where the file with this checksum lives (or will live) in the local cache."""
        return self._dir / f"{_check_sha(sha256)}.gguf"

    def resolve(self, gguf_key: str, sha256: str) -> Path:
        """Return a local path holding exactly the bytes of `gguf_key` with this sha256.

        Reuses the cached file when present; otherwise downloads and verifies it.
        Raises AdapterFileNotFoundError, AdapterChecksumError or StorageUnavailableError.
        """
        target = self.cached_path(sha256)
        if target.is_file():
            return target
        if not gguf_key or gguf_key.startswith("/"):
            raise InvalidRequestError("gguf_key must be a non-empty bucket key", gguf_key=gguf_key)
        self._download_verified(gguf_key, sha256.lower(), target)
        return target

    def _download_verified(self, key: str, sha256: str, target: Path) -> None:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise AdapterFileNotFoundError(
                    f"adapter file {key!r} is not in the bucket", gguf_key=key
                ) from err
            raise StorageUnavailableError(f"could not read adapter file ({code})") from err
        except BotoCoreError as err:
            raise StorageUnavailableError("could not reach the object store") from err

        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self._dir, prefix=".part-", suffix=".gguf")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                body = response["Body"]
                try:
                    for chunk in iter(lambda: body.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
                finally:
                    body.close()
            actual = digest.hexdigest()
            if actual != sha256:
                raise AdapterChecksumError(
                    f"adapter file {key!r} has sha256 {actual}, expected {sha256}",
                    gguf_key=key,
                )
            os.replace(tmp, target)
        except (ClientError, BotoCoreError) as err:
            raise StorageUnavailableError("adapter download was interrupted") from err
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _check_sha(sha256: str) -> str:
    value = (sha256 or "").lower()
    if not _SHA256.match(value):
        raise InvalidRequestError("gguf_sha256 must be 64 hexadecimal characters")
    return value
