"""S3Store: the job layout in any S3-compatible bucket (AWS, MinIO, Ceph RGW, R2, …).

Credentials come only from boto3's own chain (environment, profile, instance role) and
the endpoint from AWS_ENDPOINT_URL or a profile; a spec never carries either. Parts are
created with `If-None-Match: *`. Where a server answers that conditional writes are not
implemented, put_if_absent falls back to HEAD-then-PUT.

On AWS S3 the conditional PUT is atomic: of two writers racing for a part, exactly one
gets True. Some servers (moto among them) check `If-None-Match` and then write in two
steps, and the fallback is two steps by nature, so there two racing writers can both get
True. Each PUT still stores one writer's complete object, so the key holds one part,
whole, and a writer that comes later gets False. That is enough: part keys are content
ids and a unit's rows agree in item_ids, image keys and image sha256 whoever rendered
them, so either part gives the same completed set and the same `farm verify`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from farm import faults
from farm.storage.store import Store, StoreError, StoreRefused

# Above this size, uploads go multipart; s3transfer aborts a multipart upload that fails.
MULTIPART_BYTES = 64 * 1024 * 1024
# How long an operation waits for a store that went away (connections refused, reset or
# timed out, or 5xx answers) before it fails. botocore's retries alone cannot ride out an
# outage: its backoff after a connection error starts at 50 ms, so eight attempts are spent
# within about 6 s, and its retry quota runs dry when many uploads fail at once. The
# outage is timed per process and endpoint from the first failure, so once the store has
# been gone this long every operation fails at once, and the executor stops the job after
# several units failed in a row (exit 1, resumable). FARM_S3_OUTAGE_SECONDS sets it (a
# store known to come back slowly wants more; a test of the give-up path, less).
OUTAGE_SECONDS = float(os.environ.get("FARM_S3_OUTAGE_SECONDS", "45"))
OUTAGE_PAUSE = 1.0  # between tries while the store is gone
# An object read as a file (`reading`) stays in memory up to this size, then on disk.
READ_SPOOL = 16 * 1024 * 1024
_clients: dict[tuple[str | None, int], object] = {}
_clients_lock = threading.Lock()
_down_since: dict[str | None, float] = {}  # endpoint -> when it stopped answering
_down_lock = threading.Lock()


def s3_client(endpoint: str | None = None, attempts: int = 8):
    """One boto3 client per endpoint and process, with adaptive retries.

    These cover throttling and brief errors; S3Store rides out longer outages itself.
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
        if "@" in bucket:
            raise StoreError(f"{url}: credentials do not go in an S3 URL; set AWS_ACCESS_KEY_ID "
                             "and AWS_SECRET_ACCESS_KEY or AWS_PROFILE")  # fmt: skip
        segments = prefix.strip("/").split("/")
        if not bucket or any(c in bucket for c in " \\?#") or ".." in segments or (
                prefix.strip("/") and "" in segments):  # fmt: skip
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
                self._ride_out(lambda: self.client.upload_fileobj(
                    io.BytesIO(data), self.bucket, self._key(key)))  # fmt: skip
            else:
                self._ride_out(self.client.put_object, Bucket=self.bucket, Key=self._key(key),
                               Body=data)  # fmt: skip

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        faults.writing(key)  # a PUT is all or nothing: a test strikes just before it
        if self.conditional_writes:
            try:
                with self._errors(key, passthrough=True):
                    # A retry whose first try was written unseen answers "exists": the
                    # same rows are under the key either way.
                    self._ride_out(self.client.put_object, Bucket=self.bucket,
                                   Key=self._key(key), Body=data, IfNoneMatch="*")  # fmt: skip
                return True
            except ClientError as err:
                code = _code(err)
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    return False
                if code not in ("NotImplemented", "501", "InvalidArgument", "InvalidRequest"):
                    raise self._error(self._url(key), err) from None
                self.conditional_writes = False
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            with self._errors(key, passthrough=True):
                # The body is read inside the retried call: a connection can drop mid-way.
                return self._ride_out(lambda: self.client.get_object(
                    Bucket=self.bucket, Key=self._key(key))["Body"].read())  # fmt: skip
        except ClientError as err:
            if _code(err) in ("NoSuchKey", "404"):
                raise FileNotFoundError(self._url(key)) from None
            raise self._error(self._url(key), err) from None

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[BinaryIO]:
        """The object downloaded into a spooled file: in memory while small, on the local
        disk past READ_SPOOL bytes, so a large table never sits whole in memory."""
        from botocore.exceptions import ClientError

        with tempfile.SpooledTemporaryFile(max_size=READ_SPOOL) as f:

            def download() -> None:
                f.seek(0)
                f.truncate()
                self.client.download_fileobj(self.bucket, self._key(key), f)

            try:
                with self._errors(key, passthrough=True):
                    self._ride_out(download)
            except ClientError as err:
                if _code(err) in ("NoSuchKey", "404"):
                    raise FileNotFoundError(self._url(key)) from None
                raise self._error(self._url(key), err) from None
            f.seek(0)
            yield f  # type: ignore[misc]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._errors(key, passthrough=True):
                self._ride_out(self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if _code(err) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._error(self._url(key), err) from None

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._ride_out(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        args = {"Bucket": self.bucket, "Prefix": root + prefix}
        while True:
            # Page by page, so that each request rides out an outage on its own.
            with self._errors(prefix):
                page = self._ride_out(self.client.list_objects_v2, **args)
            for obj in page.get("Contents", []):
                yield obj["Key"][len(root) :]
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def child(self, name: str) -> S3Store:
        return S3Store(self.bucket, self._key(name), self.endpoint)

    def probe(self):
        """Reachable endpoint that speaks S3, credentials and bucket, without writing.

        It fails in seconds: the outage ride-out is for stores that go away mid-job, not
        for a wrong endpoint given to `farm status`.

        A 404 to HEAD has no body, so an endpoint that is not S3 at all (a web server, a
        wrong port) would read as "no such bucket": a listing tells them apart, since S3
        answers it with an error code of its own.
        """
        from botocore.exceptions import ClientError

        # Few retries: a wrong endpoint should fail in seconds, not after backoff.
        client = s3_client(self.endpoint, attempts=2)
        try:
            with self._errors("", passthrough=True):
                client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if _code(err) in ("403", "AccessDenied"):
                # Credentials scoped to a prefix may not see the bucket itself; the reads
                # and writes under the prefix decide.
                return client
            if _code(err) not in ("404", "NoSuchBucket"):
                raise self._error(self.url, err) from None
            try:
                with self._errors("", passthrough=True):
                    client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except ClientError as listed:
                if _code(listed) == "NoSuchBucket":
                    raise StoreError(
                        f"s3://{self.bucket}: the bucket does not exist; create it or fix the URL"
                    ) from None
                raise self._error(self.url, listed) from None
        return client

    def check(self) -> None:
        """Reachable endpoint, credentials, bucket and write access, before any rendering."""

        client = self.probe()
        probe = ".farm-write-check"
        with self._errors(probe):
            client.put_object(Bucket=self.bucket, Key=self._key(probe), Body=b"")
            client.delete_object(Bucket=self.bucket, Key=self._key(probe))

    def _ride_out(self, call: Callable, **kwargs):
        """call(**kwargs), tried again while the store is unreachable, up to OUTAGE_SECONDS."""
        while True:
            try:
                result = call(**kwargs)
            except Exception as err:
                if not _unreachable(err):
                    raise
                now = time.monotonic()
                with _down_lock:
                    since = _down_since.setdefault(self.endpoint, now)
                if now - since >= OUTAGE_SECONDS:
                    raise
                time.sleep(OUTAGE_PAUSE)
                continue
            if self.endpoint in _down_since:
                with _down_lock:
                    _down_since.pop(self.endpoint, None)
            return result

    def _error(self, url: str, err: Exception) -> StoreError:
        return _store_error(url, err, self.client.meta.endpoint_url)

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
            raise self._error(self._url(key), err) from None
        except BotoCoreError as err:
            raise self._error(self._url(key), err) from None


def _unreachable(err: Exception) -> bool:
    """The store is away (no connection, a dropped one, a timeout, 5xx), not refusing."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(err, ConnectionError | HTTPClientError):
        return True
    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status in (500, 502, 503, 504)
    return False


def _code(err) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _store_error(url: str, err: Exception, endpoint: str | None = None) -> StoreError:
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
        if code in ("AccessDenied", "403") and _writes(err):
            return StoreRefused(f"{url}: access denied to writes ({code}); give the "
                                "credentials write access to the prefix, then resume")  # fmt: skip
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StoreError(f"{url}: access denied ({code}); check the credentials' permissions")
        if code in ("SlowDown", "503") and _writes(err):
            # botocore has already tried again with backoff: the store sheds writes.
            return StoreRefused(
                f"{url}: the store keeps answering SlowDown (HTTP 503) to writes; resume "
                "once it recovers, or with fewer workers"
            )
        head = getattr(err, "operation_name", "").startswith("Head")
        if (not code or code.isdigit()) and not head:
            # botocore found no S3 error in the answer and fell back to the HTTP status
            # (answers to HEAD never carry one, so they don't count).
            return StoreError(
                f"{url}: the endpoint {endpoint or 'in use'} answered HTTP {status} with no S3 "
                "error: it does not look like an S3 API; check AWS_ENDPOINT_URL or --s3-endpoint"
            )
        return StoreError(f"{url}: S3 error {code} (HTTP {status})")
    return StoreError(f"{url}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")


def _writes(err) -> bool:
    """Whether a ClientError answered a write."""
    return getattr(err, "operation_name", "") in (
        "PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
        "CopyObject", "DeleteObject", "DeleteObjects",
    )  # fmt: skip
