"""S3 blob store: ranged reads, put/get, head, file transfer, prefix delete."""

from __future__ import annotations

from typing import Any

from lora_common.errors import ServiceUnavailable


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/key' -> (bucket, key); ValueError otherwise."""
    if not uri.startswith("s3://"):
        raise ValueError("not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError("s3 URI needs a bucket and a key")
    return bucket, key


class BlobStore:
    """One bucket by default; ``bucket=`` reaches another one (base models)."""

    def __init__(self, bucket: str, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.bucket = bucket
        self.client = client

    def _call(self, op: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket", "InvalidRange", "416"):
                raise
            raise ServiceUnavailable("Storage unavailable", f"S3 {op} failed ({code})") from exc
        except BotoCoreError as exc:
            raise ServiceUnavailable("Storage unavailable", f"S3 {op} failed") from exc

    def ping(self) -> None:
        self._call("head_bucket", Bucket=self.bucket)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._call("put_object", Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get_bytes(self, key: str, bucket: str | None = None) -> bytes:
        resp = self._call("get_object", Bucket=bucket or self.bucket, Key=key)
        return resp["Body"].read()

    def read_range(self, key: str, offset: int, length: int, bucket: str | None = None) -> bytes:
        """Bytes [offset, offset+length) with one ranged GET (shorter at end of object)."""
        if length <= 0:
            return b""
        from botocore.exceptions import ClientError

        try:
            resp = self._call(
                "get_object",
                Bucket=bucket or self.bucket,
                Key=key,
                Range=f"bytes={offset}-{offset + length - 1}",
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("InvalidRange", "416"):
                return b""
            raise
        return resp["Body"].read()

    def head(self, key: str, bucket: str | None = None) -> dict[str, Any] | None:
        """{'size', 'etag', 'content_type'} or None when the object does not exist."""
        from botocore.exceptions import ClientError

        try:
            resp = self._call("head_object", Bucket=bucket or self.bucket, Key=key)
        except ClientError:
            return None
        return {
            "size": resp["ContentLength"],
            "etag": resp.get("ETag", "").strip('"'),
            "content_type": resp.get("ContentType"),
        }

    def upload_file(self, path: str, key: str) -> None:
        self._call("upload_file", Filename=path, Bucket=self.bucket, Key=key)

    def download_file(self, key: str, path: str, bucket: str | None = None) -> None:
        self._call("download_file", Bucket=bucket or self.bucket, Key=key, Filename=path)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object (and, the bucket being versioned, every version and delete
        marker) under ``prefix``. Returns how many entries were removed."""
        if not prefix or not prefix.endswith("/"):
            raise ValueError("prefix must be non-empty and end with '/'")
        removed = 0
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            entries = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            for i in range(0, len(entries), 1000):
                chunk = entries[i : i + 1000]
                self._call("delete_objects", Bucket=self.bucket, Delete={"Objects": chunk})
                removed += len(chunk)
        return removed

    def list_keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out
