"""Where the report's tasks run: here, on a pool of this machine's processes, or on the
Ray cluster at `--address`.

A task is a plain function of picklable arguments that reads and writes through the job's
store, given by its URL, so images never pass through the driver. The pool or the cluster
is joined on first use and kept for the whole report, so a report worked bucket by bucket
starts its processes once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

# With no worker count given, a batch smaller than this runs in this process: starting
# processes (about a second each, importing numpy, scikit-image and Pillow) would cost
# more than it saves.
PROCESS_MIN = 100


class TaskRunner:
    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.workers, self.address = workers, address
        self._pool = None
        self._remote: dict[Callable, object] = {}

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, *_: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def run(self, fn: Callable, calls: Sequence[tuple]) -> Iterator[tuple[int, object]]:
        """(index, result) of fn(*args) for each args in `calls`, as they finish."""
        if not calls:
            return
        if self.address:
            yield from self._on_ray(fn, calls)
            return
        count = self.workers or ((os.cpu_count() or 1) if len(calls) >= PROCESS_MIN else 1)
        if self._pool is None and (count == 1 or len(calls) == 1):
            for i, args in enumerate(calls):
                yield i, fn(*args)
            return
        from concurrent.futures import as_completed

        pool = self._pool or self._start(count)
        futures = {pool.submit(fn, *args): i for i, args in enumerate(calls)}
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

    def _on_ray(self, fn: Callable, calls: Sequence[tuple]) -> Iterator[tuple[int, object]]:
        import ray

        if not self._remote:
            from farm.run.ray_start import start_ray

            start_ray(self.address)
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(num_cpus=1)(fn)
        pending = {remote.remote(*args): i for i, args in enumerate(calls)}  # type: ignore[attr-defined]
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ready[0]), ray.get(ready[0])
