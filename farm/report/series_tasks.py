"""The report's per-series work, run in parallel and kept by content.

Measuring a series (reading its images, the distances, its strength animation) depends on
nothing but the series: its images, strengths and flags. Each is a task: on the Ray
cluster at `--address`, else on this machine's cores. A task reads and writes through the
job's store, so the images of an s3:// job never pass through the driver; it returns the
series' rows, which are small. Its result is kept under report/series/ by a key over
everything that shapes it, so a report of a grown or resumed job measures only what is new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from farm.report.series import Series

SERIES_CACHE = "report/series/"
# With no worker count given, series are measured in this process up to this many: below
# it, starting processes (about a second each, importing numpy, scikit-image and Pillow)
# costs more than it saves.
PROCESS_MIN = 100
# Bump when measuring or animating changes, so results kept by an older report are not used.
MEASURE_VERSION = 1


@dataclass(frozen=True)
class SeriesJob:
    """One series to measure, with the name its animation is written under."""

    series: Series
    animation: str  # the animation's key in the store
    caption: str  # the LoRA named on each frame

    @property
    def key(self) -> str:
        """A content key: the series' images (item and key), strengths and flags, and
        what the animation is drawn with."""
        shots = [(s, shot.item_id, shot.key, list(shot.flags)) for s, shot in self.series.shots]
        payload = [MEASURE_VERSION, self.series.lora, self.caption, shots]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


def measure_one(store_url: str, job: SeriesJob, cell_px: int) -> dict:
    """A task: measure one series, write its animation, keep the result; returns
    {"rows": …, "animation": key or None}."""
    from farm.report.animate import strength_animation
    from farm.report.measure import decode, measure
    from farm.storage import open_store

    store = open_store(store_url)
    rows, images = measure(job.series, lambda key: decode(store.get(key)), 0)
    frames = [(_caption(job.caption, s, shot), img)
              for (s, img), (_, shot) in zip(images, job.series.shots, strict=True)
              if img is not None]  # fmt: skip
    animation = None
    if len(frames) > 1:
        # An animation is watched at the image's own size (at least 128 px): small
        # renders enlarged to a sheet's cell would only make the file bigger.
        side = min(cell_px, max(128, *frames[0][1].size))
        animation = job.animation
        store.put(animation, strength_animation(frames, cell_px=side))
    result = {"rows": rows, "animation": animation}
    # NaN is kept as JSON's NaN: Python reads back what it wrote.
    store.put(f"{SERIES_CACHE}{job.key}-{cell_px}.json", json.dumps(result).encode())
    return result


def measure_all(store, jobs: Sequence[SeriesJob], cell_px: int, *, workers: int | None = None,
                address: str | None = None,
                progress: Callable[[int, int], None] | None = None,
                kept: set[str] | None = None, runner: SeriesRunner | None = None,
                ) -> Iterator[tuple[int, dict, bool]]:  # fmt: skip
    """(index, result, computed) for every job, kept results first; the others computed
    as tasks. An animation kept under an older name is copied to the job's name. `kept`:
    the names under report/series/, listed once by a caller that measures in batches."""
    if kept is None:
        kept = kept_results(store)
    todo: list[int] = []
    done = 0
    for i, job in enumerate(jobs):
        name = f"{job.key}-{cell_px}.json"
        result = _kept(store, name) if name in kept else None
        if result is None:
            todo.append(i)
            continue
        if result["animation"] and result["animation"] != job.animation:
            store.put(job.animation, store.get(result["animation"]))
            result["animation"] = job.animation
        done += 1
        if progress:
            progress(done, len(jobs))
        yield i, result, False
    with contextlib.ExitStack() as stack:
        if runner is None:
            runner = stack.enter_context(SeriesRunner(store.url, cell_px, workers, address))
        for i, result in runner.run([jobs[i] for i in todo]):
            done += 1
            if progress:
                progress(done, len(jobs))
            yield todo[i], result, True


def kept_results(store) -> set[str]:
    return {k.removeprefix(SERIES_CACHE) for k in store.list(SERIES_CACHE)}


def _kept(store, name: str) -> dict | None:
    """A kept result, or None when it cannot be read (it is then measured again)."""
    try:
        result = json.loads(store.get(f"{SERIES_CACHE}{name}"))
        if isinstance(result, dict) and isinstance(result.get("rows"), list):
            return result
    except Exception:  # noqa: BLE001 - a damaged cache entry is only a miss
        pass
    return None


class SeriesRunner:
    """Where series are measured: here, on a pool of processes, or on the Ray cluster at
    `address`. The pool or the cluster is joined on first use and kept for every batch
    of one report, so a report measured bucket by bucket starts its processes once."""

    def __init__(self, store_url: str, cell_px: int, workers: int | None = None,
                 address: str | None = None) -> None:  # fmt: skip
        self.store_url, self.cell_px = store_url, cell_px
        self.workers, self.address = workers, address
        self._pool = None
        self._remote = None

    def __enter__(self) -> SeriesRunner:
        return self

    def __exit__(self, *_: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def run(self, jobs: list[SeriesJob]) -> Iterator[tuple[int, dict]]:
        if not jobs:
            return
        if self.address:
            yield from self._on_ray(jobs)
            return
        count = self.workers or ((os.cpu_count() or 1) if len(jobs) >= PROCESS_MIN else 1)
        if self._pool is None and (count == 1 or len(jobs) == 1):
            for i, job in enumerate(jobs):
                yield i, measure_one(self.store_url, job, self.cell_px)
            return
        from concurrent.futures import as_completed

        pool = self._pool or self._start(count)
        futures = {pool.submit(measure_one, self.store_url, job, self.cell_px): i
                   for i, job in enumerate(jobs)}  # fmt: skip
        for future in as_completed(futures):
            yield futures[future], future.result()

    def _start(self, count: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Spawned, not forked: the driver may hold threads (a store's pool, torch's) that a
        # forked child would inherit half-locked.
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=count, mp_context=context)
        return self._pool

    def _on_ray(self, jobs: list[SeriesJob]) -> Iterator[tuple[int, dict]]:
        import ray

        if self._remote is None:
            from farm.run.ray_start import start_ray

            start_ray(self.address)
            self._remote = ray.remote(num_cpus=1)(measure_one)
        pending = {self._remote.remote(self.store_url, job, self.cell_px): i
                   for i, job in enumerate(jobs)}  # fmt: skip
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ready[0]), ray.get(ready[0])


def _caption(lora: str, strength: float, shot) -> str:
    from farm.spec.strength import format_number

    text = f"{lora} {format_number(strength)}"
    return f"{text} · {', '.join(shot.flags)}" if shot.flags else text
