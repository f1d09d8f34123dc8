"""S3Store: the job layout in any S3-compatible bucket (AWS, MinIO, Ceph RGW, R2, …).

Credentials come only from boto3's own chain (environment, profile, instance role) and
the endpoint from AWS_ENDPOINT_URL or a profile; a spec never carries either. Parts are
created with `If-None-Match: *`. Where a server answers that conditional writes are not
implemented, put_if_absent falls back to HEAD-then-PUT: the keys are content ids and a
unit's rows are deterministic, so the rare race writes the same rows twice under one key.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator

from farm.store import Store, StoreError

# Above this size, uploads go multipart; s3transfer aborts a multipart upload that fails.
MULTIPART_BYTES = 64 * 1024 * 1024
_clients: dict[tuple[str | None, int], object] = {}
_clients_lock = threading.Lock()


def s3_client(endpoint: str | None = None, attempts: int = 8):
    """One boto3 client per endpoint and process, with adaptive retries.

    Eight attempts ride out a store that is gone for about half a minute.
    """
    with _clients_lock:
        if (endpoint, attempts) not in _clients:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "adaptive", "max_attempts": attempts},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
            )
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=endpoint, config=config)
            _clients[(endpoint, attempts)] = client
        return _clients[(endpoint, attempts)]


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.conditional_writes = True

    @classmethod
    def from_url(cls, url: str, endpoint: str | None = None) -> S3Store:
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not bucket or any(c in bucket for c in " \\?#") or ".." in prefix.split("/"):
            raise StoreError(f"{url}: malformed S3 URL; expected s3://bucket/prefix")
        return cls(bucket, prefix, endpoint)

    @property
    def client(self):
        return s3_client(self.endpoint)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            if len(data) >= MULTIPART_BYTES:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key))
            else:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        if self.conditional_writes:
            try:
                with self._errors(key, passthrough=True):
                    self.client.put_object(
                        Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                    )
                return True
            except ClientError as err:
                code = _code(err)
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    return False
                if code not in ("NotImplemented", "501", "InvalidArgument", "InvalidRequest"):
                    raise _store_error(self._url(key), err) from None
                self.conditional_writes = False
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            with self._errors(key, passthrough=True):
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if _code(err) in ("NoSuchKey", "404"):
                raise FileNotFoundError(self._url(key)) from None
            raise _store_error(self._url(key), err) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._errors(key, passthrough=True):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if _code(err) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise _store_error(self._url(key), err) from None

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        with self._errors(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(root) :]

    def child(self, name: str) -> S3Store:
        return S3Store(self.bucket, self._key(name), self.endpoint)

    def check(self) -> None:
        """Reachable endpoint, credentials, bucket and write access, before any rendering."""
        from botocore.exceptions import ClientError

        # Few retries: a wrong endpoint should fail in seconds, not after backoff.
        client = s3_client(self.endpoint, attempts=2)
        try:
            with self._errors("", passthrough=True):
                client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if _code(err) in ("404", "NoSuchBucket"):
                raise StoreError(
                    f"s3://{self.bucket}: the bucket does not exist; create it or fix the URL"
                ) from None
            raise _store_error(self.url, err) from None
        probe = ".farm-write-check"
        with self._errors(probe):
            client.put_object(Bucket=self.bucket, Key=self._key(probe), Body=b"")
            client.delete_object(Bucket=self.bucket, Key=self._key(probe))

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}" if key else self.url

    @contextlib.contextmanager
    def _errors(self, key: str, passthrough: bool = False):
        """botocore errors as one-line StoreErrors; ClientErrors kept when asked."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as err:
            if passthrough:
                raise
            raise _store_error(self._url(key), err) from None
        except BotoCoreError as err:
            raise _store_error(self._url(key), err) from None


def _code(err) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _store_error(url: str, err: Exception) -> StoreError:
    """Say what is wrong and what to do; botocore messages never include secrets."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return StoreError(
            f"{url}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or use an instance role"
        )
    if isinstance(err, EndpointConnectionError):
        return StoreError(
            f"{url}: cannot reach the S3 endpoint {err.kwargs.get('endpoint_url', '')}; "
            "check AWS_ENDPOINT_URL or --s3-endpoint"
        )
    if isinstance(err, ClientError):
        code = _code(err)
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return StoreError(f"{url}: the bucket does not exist; create it or fix the URL")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StoreError(f"{url}: access denied ({code}); check the credentials' permissions")
        return StoreError(f"{url}: S3 error {code or status}")
    return StoreError(f"{url}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
