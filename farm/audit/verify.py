"""`farm verify` and `farm status`: answers read from the store alone."""

from __future__ import annotations

import hashlib
import os
import random
import secrets
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import pyarrow as pa

from farm.plan.stored import stored_plan
from farm.plan.sweep import expand
from farm.records.job_doc import read_job
from farm.records.parts import METADATA, completed_items, iter_parts
from farm.storage.scratch import Spill, bucket_count, key_bucket
from farm.storage.store import Store

# Item ids a scratch bucket aims at, planned and seen: a few megabytes held at once.
IDS_PER_BUCKET = 50_000
PLANNED, SEEN = "planned", "seen"
# Rows whose images one task hashes: big enough that a task's start-up (a store client,
# a Ray task) is small beside its reads, small enough to spread a part over the workers.
CHUNK = 256


@dataclass
class Verdict:
    planned: int = 0
    rows: int = 0
    images_checked: int = 0
    problems: list[str] = field(default_factory=list)
    sample_seed: int | None = None  # the seed of `--sample`'s draw, to repeat it
    tasks: int = 0  # hashing tasks run (on the Ray cluster, with an address)
    peak_rows: int = 0  # the most rows waiting to be hashed at once

    @property
    def ok(self) -> bool:
        return not self.problems


def _compare_ids(ids: Spill) -> tuple[int, tuple[int, str] | None, list[str]]:
    """Planned item ids against those with rows, a bucket at a time: the number of items
    with a row, (how many, the first) of the planned items with none (None when none),
    and the problems of items with several rows or none planned."""
    items, missing, first = 0, 0, None
    problems: list[str] = []
    for b in range(ids.buckets):
        planned = set(ids.read(PLANNED, b))
        seen = Counter(ids.read(SEEN, b))
        items += len(seen)
        gone = planned - seen.keys()
        if gone:
            missing += len(gone)
            first = min(gone) if first is None else min(first, min(gone))
        problems += [f"item {i}: {n} rows (expected exactly one)" for i, n in seen.items() if n > 1]
        problems += [f"item {i}: has a row but is not in the plan" for i in seen.keys() - planned]
    return items, ((missing, first) if missing else None), problems


def _compacted_rows(store: Store) -> int | None:
    """metadata.parquet's row count, from its footer; None when it cannot be read."""
    import pyarrow.parquet as pq

    with store.reading(METADATA) as f:
        try:
            return pq.ParquetFile(f).metadata.num_rows
        except (pa.ArrowException, OSError):
            return None


def verify_job(store: Store, *, check_images: bool = True, limit: int = 20,
               sample: int | None = None, seed: int | None = None, workers: int | None = None,
               address: str | None = None, progress: Callable[[int, int], None] | None = None,
               chunk: int = CHUNK) -> Verdict:  # fmt: skip
    """Every planned item has exactly one row; every row's image exists with its sha256.

    Images are hashed in parallel: as Ray tasks on the cluster at `address`, else on
    `workers` threads here (default: one per core). With `sample`, only that many rows'
    images are hashed, drawn at random with `seed` (a fresh one when None, recorded in the
    verdict); the rows are all checked. `progress(done, total)` is told as images are
    checked. Rows stream part by part: the driver holds the part being read,
    and at most IN_FLIGHT chunks of `chunk` rows a worker and one chunk's remainder
    (the verdict's peak_rows), whatever the job's size; item ids are compared a scratch
    bucket at a time (farm/storage/scratch.py)."""
    doc = read_job(store)
    verdict = Verdict()
    with Spill(bucket_count(int(doc["plan"]["items"]), IDS_PER_BUCKET)) as ids:
        for item in expand(stored_plan(store, doc)):
            ids.add(PLANNED, key_bucket(item.item_id, ids.buckets), item.item_id)
            verdict.planned += 1
        draw = _Reservoir(sample, seed) if check_images and sample is not None else None
        if draw is not None:
            verdict.sample_seed = draw.seed
        # Every row's image is hashed as its part is read, a bounded number of chunks in
        # flight; item ids go to the scratch buckets: the driver never holds every row.
        hasher = Hasher(store, workers, address, progress, verdict.planned,
                        chunk) if check_images and draw is None else None  # fmt: skip
        for key, table in iter_parts(store):
            if not isinstance(table, pa.Table):
                verdict.problems.append(
                    f"{key}: corrupt part ({table}); resume renders its items again"
                )
                continue
            columns = ["item_id", "image_key", "image_sha256"]
            columns += ["named_key"] if "named_key" in table.column_names else []  # later
            part_rows = table.select(columns).to_pylist()
            for r in part_rows:
                ids.add(SEEN, key_bucket(r["item_id"], ids.buckets), r["item_id"])
            verdict.rows += len(part_rows)
            if draw is not None:
                draw.offer(part_rows)
            elif hasher is not None:
                hasher.add(part_rows)
        if draw is not None and draw.rows:
            hasher = Hasher(store, workers, address, progress, len(draw.rows), chunk)
            hasher.add(draw.rows)
        ids.flush()
        items, missing, found = _compare_ids(ids)
    problems = verdict.problems
    if missing:
        problems.append(f"{missing[0]} planned items have no row (e.g. {missing[1]}); "
                        f"run `farm resume {store.url}`")  # fmt: skip
    problems += found
    if hasher is not None:
        problems += hasher.finish()
        verdict.images_checked, verdict.tasks = hasher.checked, hasher.tasks
        verdict.peak_rows = hasher.peak
    if doc.get("status") == "done" and store.exists(METADATA) and not missing:
        compacted = _compacted_rows(store)
        if compacted is None:
            problems.append(f"{METADATA}: unreadable; rerun `farm resume` to compact again")
        elif compacted != items:
            problems.append(f"{METADATA}: {compacted} rows, parts hold {items} items; "
                            "rerun `farm resume` to compact again")  # fmt: skip
    if len(problems) > limit:
        verdict.problems = problems[:limit] + [f"… and {len(problems) - limit} more problems"]
    return verdict


class _Reservoir:
    """A uniform sample of `size` rows from a stream of unknown length, in one pass
    (Algorithm R), from a seeded generator: the same seed and parts draw the same rows."""

    def __init__(self, size: int, seed: int | None):
        self.size = size
        self.seed = seed if seed is not None else secrets.randbelow(2**31)
        self.random = random.Random(self.seed)
        self.rows: list[dict] = []
        self.count = 0

    def offer(self, rows: list[dict]) -> None:
        for row in rows:
            self.count += 1
            if len(self.rows) < self.size:
                self.rows.append(row)
            elif (j := self.random.randrange(self.count)) < self.size:
                self.rows[j] = row


# Chunks hashed at once, per worker: enough to keep each busy while the next part is read.
IN_FLIGHT = 2


class Hasher:
    """Hashes rows' images in chunks of `chunk` rows as they are added: as Ray tasks on
    the cluster at `address`, or on `workers` threads here (default: one per core). At
    most IN_FLIGHT chunks a worker wait at once, so the rows held stay bounded whatever
    the job's size; `peak` records the most held. `progress(done, total)` counts images."""

    def __init__(self, store: Store, workers: int | None, address: str | None,
                 progress: Callable[[int, int], None] | None, total: int,
                 chunk: int = CHUNK) -> None:  # fmt: skip
        self.store, self.progress, self.total, self.chunk = store, progress, total, chunk
        self.address = address
        self.results: dict[int, list[str]] = {}
        self.pending: dict = {}  # future or Ray ref → (chunk number, rows in it)
        self.buffer: list[dict] = []
        self.chunks = self.checked = self.tasks = self.peak = 0
        if address:
            import ray

            from farm.run.ray_start import start_ray

            start_ray(address)
            self.slots = IN_FLIGHT * max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.remote = ray.remote(num_cpus=1)(check_rows)
            self.pool = None
        else:
            threads = workers or os.cpu_count() or 1
            self.slots = IN_FLIGHT * threads
            # Reads and hashing release the GIL, so threads keep the cores busy without
            # the start-up of processes; each task opens its own store client.
            self.pool = ThreadPoolExecutor(max_workers=threads)

    def add(self, rows: list[dict]) -> None:
        """Hash these rows (a part's), chunk by chunk; a remainder waits for the next."""
        self.buffer += rows
        while len(self.buffer) >= self.chunk:
            self._submit(self.buffer[: self.chunk])
            self.buffer = self.buffer[self.chunk :]
        self._held()

    def finish(self) -> list[str]:
        """Hash what is left, wait for every chunk; the problems found, in row order."""
        if self.buffer:
            rows, self.buffer = self.buffer, []
            self._submit(rows)
        while self.pending:
            self._collect()
        if self.pool is not None:
            self.pool.shutdown()
        return [p for i in range(self.chunks) for p in self.results[i]]

    def _submit(self, rows: list[dict]) -> None:
        while len(self.pending) >= self.slots:
            self._collect()
        if self.pool is not None:
            task = self.pool.submit(check_rows, self.store.url, rows)
        else:
            task = self.remote.remote(self.store.url, rows)
            self.tasks += 1
        self.pending[task] = (self.chunks, len(rows))
        self.chunks += 1
        self._held()

    def _held(self) -> None:
        """Record the rows held past the part being read: those in flight and the
        remainder waiting for a full chunk."""
        in_flight = sum(n for _, n in self.pending.values())
        self.peak = max(self.peak, in_flight + len(self.buffer) % self.chunk)

    def _collect(self) -> None:
        """Wait for one chunk and take its result."""
        if self.pool is not None:
            task = next(as_completed(list(self.pending)))
            result = task.result()
        else:
            import ray

            (task,), _ = ray.wait(list(self.pending), num_returns=1)
            result = ray.get(task)
        number, count = self.pending.pop(task)
        self.results[number] = result
        self.checked += count
        if self.progress:
            self.progress(self.checked, max(self.total, self.checked))


def check_images_in_parallel(store: Store, rows: list[dict], workers: int | None,
                             address: str | None,
                             progress: Callable[[int, int], None] | None = None,
                             chunk: int = CHUNK) -> tuple[list[str], int]:  # fmt: skip
    """Hash the rows' images (see Hasher); the problems found, in row order, and the Ray
    tasks run."""
    hasher = Hasher(store, workers, address, progress, len(rows), chunk)
    hasher.add(rows)
    return hasher.finish(), hasher.tasks


def check_rows(store_url: str, rows: list[dict]) -> list[str]:
    """One task: each row's image (and friendly copy) exists with the row's sha256."""
    from farm.storage import open_store

    store = open_store(store_url)
    return [p for p in (_check_image(store, row) for row in rows) if p]


def _check_image(store: Store, row: dict) -> str | None:
    """The row's image, and its friendly copy if it has one, exist with the row's sha256."""
    for key in filter(None, (row["image_key"], row.get("named_key"))):
        if not store.exists(key):
            return f"{key}: missing (item {row['item_id']})"
        digest = hashlib.sha256(store.get(key)).hexdigest()
        if digest != row["image_sha256"]:
            return (f"{key}: sha256 {digest[:12]}… does not match its row "
                    f"({row['image_sha256'][:12]}…)")  # fmt: skip
    return None


def job_status(store: Store) -> dict:
    """Progress of a job: planned, rendered, parts, rate, failures."""
    doc = read_job(store)
    done = completed_items(store)
    planned = doc["plan"]["items"]
    runs = doc.get("runs", [])
    rendered = sum(_count(r.get("rendered")) for r in runs)
    seconds = sum(_count(r["counters"].get("seconds")) for r in runs
                  if isinstance(r.get("counters"), dict))  # fmt: skip
    return {
        "job_id": doc["job_id"],
        "status": doc.get("status"),
        "planned": planned,
        "rendered": len(done),
        "remaining": max(planned - len(done), 0),
        "percent": round(100 * len(done) / planned, 1) if planned else 100.0,
        "parts": sum(1 for k in store.list("parts/") if k.endswith(".parquet")),
        "runs": len(runs),
        "images_per_second": round(rendered / seconds, 3) if seconds else None,
        "failed_items": _count(runs[-1].get("failed_items")) if runs else 0,
        "updated_at": doc.get("updated_at"),
    }


def _count(value: object) -> float:
    """A number from a run record; anything else counts as 0 (status is best effort)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0
