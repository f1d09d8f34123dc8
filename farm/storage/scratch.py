"""Scratch space on the local disk: values appended to buckets of JSON lines.

A reader of a huge job (the report, verify) cannot hold a row, or even an item id, per
image; it appends each to one of a few bucket files, chosen by a hash of what must end up
together, and then takes one bucket at a time. The files are ours, but they are JSON:
nothing read back from disk is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from farm.errors import FarmError

# Text kept in memory, over all buckets, before it is appended to the files: a line may be
# an item id (a few dozen bytes) or a whole series' rows (a few kilobytes).
_FLUSH_BYTES = 4 * 1024 * 1024


class ScratchError(FarmError):
    """The local scratch folder cannot be written (no space, no folder): the reader stops
    with one line that says where, and nothing half-written is left there."""


def bucket_count(values: int, per_bucket: int) -> int:
    return max(1, math.ceil(values / max(1, per_bucket)))


def key_bucket(value: object, buckets: int) -> int:
    """The bucket of a value (its JSON): stable across processes and runs (not hash())."""
    text = json.dumps(value, ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest()) % buckets


class Spill:
    """Named families of bucket files in a temporary folder, removed on close."""

    def __init__(self, buckets: int, parent: str | None = None) -> None:
        self.buckets = buckets
        try:
            self.root = Path(tempfile.mkdtemp(prefix="farm-scratch-", dir=parent))
        except OSError as err:
            raise _refused(parent or tempfile.gettempdir(), err) from None
        self._pending: dict[tuple[str, int], list[str]] = {}
        self._held = 0

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def add(self, family: str, bucket: int, value: object) -> None:
        line = json.dumps(value, ensure_ascii=False)
        self._pending.setdefault((family, bucket), []).append(line)
        self._held += len(line)
        if self._held >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for family, bucket in list(self._pending):
            self._flush(family, bucket)

    def read(self, family: str, bucket: int) -> Iterator:
        """The values added to one bucket, in the order they were added."""
        self._flush(family, bucket)
        path = self._path(family, bucket)
        if not path.exists():
            return
        with path.open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    def _flush(self, family: str, bucket: int) -> None:
        lines = self._pending.pop((family, bucket), None)
        if lines:
            self._held -= sum(map(len, lines))
            try:
                with self._path(family, bucket).open("a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
            except OSError as err:
                raise _refused(self.root, err) from None

    def _path(self, family: str, bucket: int) -> Path:
        return self.root / f"{family}-{bucket:05d}.jsonl"


def _refused(where: object, err: OSError) -> ScratchError:
    reason = err.strerror or type(err).__name__
    return ScratchError(f"scratch folder {where}: {reason}; free space there or set TMPDIR "
                        "to a folder on a disk with room (about 4 KB an image)")  # fmt: skip
