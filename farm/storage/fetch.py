"""s3:// LoRA files and model folders, downloaded once per node into the farm home.

Files live under `cache/s3/sha256/{sha256}/` and folders under `cache/s3/dirs/{fingerprint}/`,
so a re-uploaded object never passes for the old one. Each download holds an exclusive
`flock` on a lock file beside its destination: the workers of one node wait for the
first one instead of downloading in parallel. Downloads land in a temp file or folder
beside the destination and are renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from farm.home import farm_home
from farm.limits import PICKLE_SUFFIXES
from farm.storage.hashes import cached_sha256, file_sha256
from farm.storage.store import StoreError

COMPLETE = ".farm-complete"


@dataclass(frozen=True)
class Entry:
    key: str  # the full object key
    rel: str  # relative to the folder's prefix
    size: int
    etag: str


def cache_root() -> Path:
    return farm_home() / "cache" / "s3"


def fetch_file(url: str, sha256: str | None = None) -> Path:
    """The node-local copy of one s3:// object; with `sha256`, checked against it.

    With `sha256` a cached copy is used without asking S3 at all. Without it, one HEAD
    finds the object's ETag and size, so a replaced object is downloaded again.
    """
    bucket, key = _split(url, folder=False)
    name = PurePosixPath(key).name
    if sha256:
        dest = cache_root() / "sha256" / _hex(sha256, url) / name
        if not dest.is_file():
            with _locked(dest):
                if not dest.is_file():
                    _download_checked(bucket, key, url, dest, sha256)
        return dest
    head = _head(bucket, key, url)
    version = hashlib.sha256(json.dumps([url, head["ETag"], head["ContentLength"]]).encode())
    dest = cache_root() / "etag" / version.hexdigest()[:40] / name
    if not dest.is_file():
        with _locked(dest):
            if not dest.is_file():
                _download_checked(bucket, key, url, dest, None)
                # Also file it by content, so a worker given the sha256 skips S3; the
                # hash is recorded, so a checkpoint's planning does not read it again.
                by_sha = cache_root() / "sha256" / cached_sha256(dest) / name
                by_sha.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.link(dest, by_sha)
    return dest


def fetch_dir(url: str, fingerprint: str | None = None) -> Path:
    """The node-local copy of every object under an s3:// prefix (pickles left out).

    With `fingerprint` (from s3_dir_fingerprint at plan time) a complete cached copy is
    used without asking S3; a folder whose listing no longer matches it is refused.
    """
    entries = None
    if fingerprint is None:
        entries = list_dir(url)
        fingerprint = _fingerprint(entries)
    dest = cache_root() / "dirs" / _hex(fingerprint, url)
    if (dest / COMPLETE).is_file():
        return dest
    with _locked(dest):
        if (dest / COMPLETE).is_file():
            return dest
        entries = entries or list_dir(url)
        if _fingerprint(entries) != fingerprint:
            raise StoreError(
                f"{url}: the model folder changed since the job was planned; "
                "restore it or plan a new job"
            )
        # Left by a download that died: nobody else can be writing it, we hold the lock.
        for stale in dest.parent.glob(f".{fingerprint}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{fingerprint}.", dir=dest.parent))
        try:
            bucket, _ = _split(url, folder=True)
            for entry in entries:
                target = tmp / entry.rel
                target.parent.mkdir(parents=True, exist_ok=True)
                _download(bucket, entry.key, f"s3://{bucket}/{entry.key}", target)
            (tmp / COMPLETE).write_text(json.dumps({"url": url, "fingerprint": fingerprint}))
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def s3_dir_fingerprint(url: str) -> str:
    """A sha256 over the folder's listing (key, size, ETag): cheap, nothing downloaded."""
    return _fingerprint(list_dir(url))


def list_dir(url: str) -> list[Entry]:
    """The objects under an s3:// prefix that a loader may need, sorted by key."""
    from botocore.exceptions import BotoCoreError, ClientError

    from farm.storage.s3 import _store_error, s3_client

    bucket, prefix = _split(url, folder=True)
    entries: list[Entry] = []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if rel and not rel.endswith("/"):
                    entries.append(Entry(obj["Key"], rel, obj["Size"], obj.get("ETag", "")))
    except (BotoCoreError, ClientError) as err:
        raise _store_error(url, err) from None
    if not entries:
        raise StoreError(f"{url}: no objects under this prefix; check the URL")
    for entry in entries:
        # A key like "a/../../x" must never write outside the cache folder.
        parts = PurePosixPath(entry.rel).parts
        if entry.rel.startswith("/") or ".." in parts or "." in parts:
            raise StoreError(f"{url}: object {entry.key!r} has an unsafe key")
    kept = [e for e in entries if PurePosixPath(e.rel).suffix.lower() not in PICKLE_SUFFIXES]
    if not kept:
        raise StoreError(
            f"{url}: only pickle checkpoints (.bin, .ckpt, .pt) under this prefix; "
            "farm loads .safetensors only"
        )
    return sorted(kept, key=lambda e: e.rel)


def _hex(digest: str, url: str) -> str:
    # It names a cache folder, and job.json (where it comes from) is only a file.
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise StoreError(f"{url}: {digest[:80]!r} is not a sha256; the job record is damaged")
    return digest


def _fingerprint(entries: list[Entry]) -> str:
    rows = [[e.rel, e.size, e.etag] for e in entries]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def _split(url: str, folder: bool) -> tuple[str, str]:
    from farm.storage.s3 import S3Store

    store = S3Store.from_url(url)
    if folder:
        return store.bucket, f"{store.prefix}/" if store.prefix else ""
    if not store.prefix:
        raise StoreError(f"{url}: expected s3://bucket/key naming one object")
    return store.bucket, store.prefix


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """An exclusive lock shared by every process of this node that wants `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f"{dest.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download_checked(bucket: str, key: str, url: str, dest: Path, sha256: str | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        _download(bucket, key, url, Path(tmp))
        if sha256 and (actual := file_sha256(Path(tmp))) != sha256:
            raise StoreError(
                f"{url}: sha256 {actual[:12]}… is not the {sha256[:12]}… recorded: the file "
                "changed since the job was planned; restore it or plan a new job"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _download(bucket: str, key: str, url: str, target: Path) -> None:
    """One object to `target`; s3transfer fetches large ones in parallel ranges."""
    _s3_call(url, lambda s3: s3.download_file(bucket, key, str(target)))


def _head(bucket: str, key: str, url: str) -> dict:
    return _s3_call(url, lambda s3: s3.head_object(Bucket=bucket, Key=key))


def _s3_call(url: str, call):
    """Run `call(client)`; S3 and connection errors become one-line StoreErrors."""
    from botocore.exceptions import BotoCoreError, ClientError

    from farm.storage.s3 import _code, _store_error, s3_client

    try:
        return call(s3_client())
    except ClientError as err:
        if _code(err) in ("404", "NoSuchKey", "NotFound"):
            raise StoreError(f"{url}: no such object; check the URL") from None
        raise _store_error(url, err) from None
    except BotoCoreError as err:
        raise _store_error(url, err) from None
