"""A report's scratch space on the local disk: the job's shots, split into buckets.

A million images do not fit in the driver's memory as Python objects, and the report
needs them grouped (a series is the shots of one prompt, seed and settings). So the rows
are read once and each shot is appended to one of a few bucket files, chosen by a hash of
its place (prompt, settings and seed), which every shot of a series shares. The report
then holds one bucket at a time. Buckets are JSON lines: the scratch space is ours, but
nothing read back from disk is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from farm.report.shots import LoraSetting, Shot

# Shots per bucket the report aims at. A bucket holds whole places (prompt, settings and
# seed), so one bigger than this holds a single place's images.
BUCKET_SHOTS = 5000
# Text kept in memory, over all buckets, before it is appended to the files: a line may be
# a shot (a few hundred bytes) or a whole series' rows (a few kilobytes).
_FLUSH_BYTES = 4 * 1024 * 1024


def bucket_count(shots: int, per_bucket: int = BUCKET_SHOTS) -> int:
    return max(1, math.ceil(shots / max(1, per_bucket)))


def place_bucket(shot: Shot, buckets: int) -> int:
    """The bucket of a shot's place: stable across processes and runs (not hash())."""
    return _bucket([shot.text, shot.context, shot.seed], buckets)


def _bucket(value: list, buckets: int) -> int:
    text = json.dumps(value, ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest()) % buckets


def shot_json(shot: Shot) -> list:
    return [shot.item_id, shot.key, shot.text, shot.seed,
            [[x.name, x.weight, x.shape] for x in shot.loras], [list(c) for c in shot.context],
            list(shot.flags), shot.preset]  # fmt: skip


def shot_of(value: list) -> Shot:
    item_id, key, text, seed, loras, context, flags, preset = value
    return Shot(item_id, key, text, seed, tuple(LoraSetting(*x) for x in loras),
                tuple(tuple(c) for c in context), tuple(flags), preset)  # fmt: skip


class Spill:
    """Named families of bucket files in a temporary folder, removed on close."""

    def __init__(self, buckets: int, parent: str | None = None) -> None:
        self.buckets = buckets
        self.root = Path(tempfile.mkdtemp(prefix="farm-report-", dir=parent))
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

    def write(self, family: str, bucket: int, values: Iterable[object]) -> None:
        """Replace one bucket's values."""
        self._held -= sum(map(len, self._pending.pop((family, bucket), ())))
        with self._path(family, bucket).open("w", encoding="utf-8") as f:
            for value in values:
                f.write(json.dumps(value, ensure_ascii=False) + "\n")

    def _flush(self, family: str, bucket: int) -> None:
        lines = self._pending.pop((family, bucket), None)
        if lines:
            self._held -= sum(map(len, lines))
            with self._path(family, bucket).open("a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

    def _path(self, family: str, bucket: int) -> Path:
        return self.root / f"{family}-{bucket:05d}.jsonl"
