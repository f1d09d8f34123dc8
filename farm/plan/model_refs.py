"""Model references: `tiny`, a local diffusers folder, an s3:// folder or a hub id."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from farm.tiny.identity import TINY_FINGERPRINT

WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def model_name(model: str) -> str:
    """The short name written as `Model:` in the infotext."""
    if model == "tiny":
        return "tiny"
    return Path(model.rstrip("/")).name or model


def model_fingerprint(model: str) -> str:
    """A sha256 that changes whenever the model's weights or configs change."""
    if model == "tiny":
        return TINY_FINGERPRINT
    if model.startswith("s3://"):
        from farm.storage.fetch import s3_dir_fingerprint
        from farm.storage.store import StoreError

        try:
            return s3_dir_fingerprint(model)
        except StoreError as err:
            raise StoreError(f"model: {err}") from None
    path = Path(model)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        return _dir_fingerprint(str(path.resolve()), stats)
    # A hub id: only its name is known before it is fetched.
    return hashlib.sha256(model.encode()).hexdigest()


@lru_cache(maxsize=16)
def _dir_fingerprint(root: str, stats: tuple) -> str:
    digest = hashlib.sha256()
    for file, _, _ in stats:
        sha = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                sha.update(chunk)
        rel = Path(file).relative_to(root).as_posix()
        digest.update(json.dumps([rel, sha.hexdigest()]).encode())
    return digest.hexdigest()


def model_hash(fingerprint: str) -> str:
    """The 10-hex `Model hash:` of the infotext."""
    return fingerprint[:10]
