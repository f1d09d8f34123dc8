"""File hashes kept in the node cache, so a multi-gigabyte checkpoint is read once.

A record per file lives under `cache/hashes/` of the farm home, named for the file's
absolute path and holding its size, mtime and sha256. A file whose size or mtime changed
is hashed again; a record that cannot be read is ignored, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from farm.home import farm_home


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(path: Path) -> Path:
    """Where the hash of the file at `path` (absolute) is recorded."""
    name = hashlib.sha256(str(path).encode()).hexdigest()[:40]
    return farm_home() / "cache" / "hashes" / f"{name}.json"


def cached_sha256(path: str | Path) -> str:
    """The file's sha256, computed once per path, size and mtime on this node."""
    path = Path(path).resolve()
    st = path.stat()
    record = record_path(path)
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        data = json.loads(record.read_text())
        if (isinstance(data, dict) and all(data.get(k) == v for k, v in stamp.items())
                and re.fullmatch(r"[0-9a-f]{64}", str(data.get("sha256")))):  # fmt: skip
            return data["sha256"]
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    with contextlib.suppress(OSError):  # a read-only farm home only costs a rehash
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hash-", dir=record.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(stamp | {"sha256": digest}, f)
        os.replace(tmp, record)
    return digest
