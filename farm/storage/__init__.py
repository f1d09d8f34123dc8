"""Which store a URL names: a local folder or an s3:// prefix.

Above both stores, so that farm/storage/store.py (the interface and the local folder) and
farm/storage/s3.py (which builds on it) never import each other.
"""

from __future__ import annotations

from farm.storage.store import LocalStore, Store, StoreError


def open_store(url: str) -> Store:
    """A store for a local path or an s3:// URL."""
    if url.startswith("s3://"):
        from farm.storage.s3 import S3Store  # boto3 only for jobs that use S3

        return S3Store.from_url(url)
    if "://" in url:
        raise StoreError(f"{url}: unsupported output URL; use a local folder or s3://bucket/prefix")
    return LocalStore(url)
