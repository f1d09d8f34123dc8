"""The executor: a pool of RenderWorkers (farm/run/pool.py), fed units with adapter
affinity (farm/run/affinity.py), in one dispatch loop.

Each worker holds at most IN_FLIGHT units so the next one is queued while the current one
renders. A unit whose worker died is sent again elsewhere (up to MAX_ATTEMPTS); a unit that
fails by itself is recorded as failed and the job goes on. The workers are Ray actors, or
with `local` run in this process (farm/run/backends.py); the loop is the same.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from farm import __version__
from farm.plan.items import Unit, UnitStream
from farm.run.affinity import Slot, Stream, account, next_unit
from farm.run.backends import IN_FLIGHT, LocalBackend, RayBackend, UnitFailed, WorkerLost
from farm.run.cluster import cpu_worker_bytes, error_line, start_ray, worker_layout
from farm.run.pool import Pool
from farm.run.progress import Progress
from farm.worker.render_worker import JobContext, UnitReport

MAX_ATTEMPTS = 3
# Start dispatching once every worker is up, or this long after the first one is, so
# early workers don't take every adapter set before the others arrive.
READY_GRACE = 30.0
# With no worker alive for this long (none placed yet, or a node lost and no room for a
# replacement), stop: the job stays resumable. `--worker-wait` sets it per run.
WORKER_WAIT = 300.0
# While no worker is up, say so this often.
WAITING_NOTICE = 30.0
# A run stopped with units in flight (the store refused a write) waits this long for
# in-process workers to give them up, so that nothing of this run is still loading when
# the caller goes on; Ray's workers are killed instead.
SETTLE_SECONDS = 10.0


@dataclass
class Outcome:
    images: int = 0
    units: int = 0
    failed_items: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    stopped: str = ""
    flagged: list = field(default_factory=list)  # (item_id, cell, flags)


def execute(
    streams: list[UnitStream],
    ctx: JobContext,
    *,
    total: int,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    address: str | None = None,
    echo: Callable[[str], object] = print,
    progress: Progress | None = None,
    worker_wait: float = WORKER_WAIT,
    max_workers: int | None = None,
    local: bool = False,
) -> Outcome:
    """Render every unit on a pool of workers; returns counts, failures and counters.
    `max_workers` (a tenant's cap) bounds the pool, replacements included; `local` keeps
    the workers in this process, without Ray."""
    if local:
        # One worker: a process holds one torch thread pool (farm/worker/render_worker.py),
        # and torch's OpenMP teams on several threads of one process slow each other down.
        count, resources = 1, {"num_cpus": os.cpu_count() or 1}
        backend = LocalBackend()
        where = "in this process, no Ray; "
    else:
        start_ray(address)
        model_bytes = cpu_worker_bytes(ctx.model_path)
        count, resources = worker_layout(workers, gpus_per_worker, model_bytes)
        if max_workers is not None and count > max_workers:
            count, resources = worker_layout(max_workers, gpus_per_worker, model_bytes)
        backend, where = RayBackend(resources), ""
    ids = iter(range(1 << 30))

    def new_slot() -> Slot:
        actor, ready = backend.start()
        return Slot(next(ids), actor, ready_ref=ready)

    pool = Pool(backend, [new_slot() for _ in range(count)], new_slot,
                max_replacements=2 * count + 2)  # fmt: skip
    echo(f"rendering {total} images on {count} worker{'s' if count > 1 else ''} "
         f"({where}{_describe(resources)})")  # fmt: skip
    queue = [Stream(s.adapters, iter(s.units), -(-s.items // s.size)) for s in streams]
    run = Dispatcher(pool, queue, ctx, progress or Progress(total, echo), echo,
                     count, _describe(resources), worker_wait)  # fmt: skip
    t0 = time.perf_counter()
    now = False
    try:
        run.loop()
    except KeyboardInterrupt:
        now = True
        run.say("stopped now: units in flight render again on resume")
    finally:
        run.progress.finish()
        run.outcome.seconds = time.perf_counter() - t0
        run.outcome.counters = run.summary()
        pool.kill()
        if not now:  # a second Ctrl-C waits for nothing
            backend.settle(SETTLE_SECONDS)
    _report(run.outcome, echo)
    return run.outcome


class Dispatcher:
    """One run of the executor's loop, in named steps: dispatch units to ready workers,
    wait for whatever comes back, and take in finished units, started workers and deaths."""

    def __init__(self, pool: Pool, queue: list[Stream], ctx: JobContext, progress: Progress,
                 echo: Callable[[str], object], workers: int, resources: str,
                 worker_wait: float):  # fmt: skip
        self.pool, self.queue, self.ctx, self.workers = pool, queue, ctx, workers
        self.progress, self.echo = progress, echo
        self.resources, self.worker_wait = resources, worker_wait
        self.outcome = Outcome()
        self.counters = {"pipeline_loads": 0, "adapter_loads": 0, "retries": 0, "failures": 0,
                         "worker_deaths": 0}  # fmt: skip
        self.retries: deque[tuple[Unit, int]] = deque()
        self.running: dict = {}  # ObjectRef -> (slot, unit, attempt)
        self.failures_in_a_row = 0
        self.stopping = False
        self.stop_asked = False  # a Ctrl-C or SIGTERM came (stop_signals)
        self.first_ready: float | None = None
        self.last_alive = self.last_notice = time.monotonic()

    def loop(self) -> None:
        """Until every unit is back, or the run stops; the first Ctrl-C lets units finish."""
        with self.stop_signals():
            self._loop()

    @contextlib.contextmanager
    def stop_signals(self):
        """The first Ctrl-C or SIGTERM asks the loop to stop; the second stops now.

        The first only sets a flag the loop reads between waits. Raised as
        KeyboardInterrupt instead, it could land inside a finalizer (a Ray ObjectRef's
        __del__ runs on every loop) and be swallowed there, and the run would go on.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, frame) -> None:
            if self.stop_asked:
                raise KeyboardInterrupt
            self.stop_asked = True

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> None:
        # A KeyboardInterrupt here is the second stop signal (stop_signals): it leaves the
        # loop, and execute() stops now.
        while True:
            if self.stop_asked and not self.stopping:
                self.begin_stopping()
            if not self.stopping:
                self.dispatch()
                if self.all_done:
                    return
            if self.stopping and not self.running:
                return
            if self.no_worker_for_too_long():
                return
            self.take_in(self.wait())
            if self.outcome.stopped:
                return
            busy = sum(s.in_flight > 0 for s in self.pool.slots)
            self.progress.show(busy=busy, workers=self.workers)

    def begin_stopping(self) -> None:
        """Dispatch no more; the units in flight finish and the run is recorded."""
        self.stopping = self.outcome.interrupted = True
        self.say(f"stopping: waiting for {len(self.running)} units in flight to "
                 "finish (Ctrl-C again to stop now)")  # fmt: skip

    # 1. Dispatch
    def dispatch(self) -> None:
        """Fill every ready worker up to IN_FLIGHT units, once the pool may start."""
        grace_over = self.first_ready is not None and (
            time.monotonic() - self.first_ready > READY_GRACE
        )
        if not (self.pool.all_ready or grace_over):
            return
        for slot in self.pool.ready_slots():
            while slot.in_flight < IN_FLIGHT:
                picked = next_unit(slot, self.queue, self.retries)
                if picked is None:
                    break
                unit, attempt = picked
                self.progress.begin()
                ref = self.pool.backend.render(slot.actor, unit, self.ctx, attempt)
                self.running[ref] = (slot, unit, attempt)
                slot.in_flight += 1

    @property
    def all_done(self) -> bool:
        return not self.running and not self.retries and all(s.empty for s in self.queue)

    # 2. Watch for a pool with no worker up
    def no_worker_for_too_long(self) -> bool:
        now = time.monotonic()
        if self.pool.ready_slots():
            self.last_alive = self.last_notice = now
        elif now - self.last_alive > self.worker_wait:
            self.outcome.stopped = (
                f"no worker has been up for {self.worker_wait:g}s: the cluster has no room "
                f"for a worker ({self.resources}); add nodes or ask for less "
                "(--gpus-per-worker, --workers), or wait longer (--worker-wait)"
            )
            return True
        elif now - self.last_notice > WAITING_NOTICE:
            self.last_notice = now
            left = self.worker_wait - (now - self.last_alive)
            self.say(f"waiting for the cluster to place a worker ({self.resources}); "
                     f"giving up in {left:.0f}s")  # fmt: skip
        return False

    # 3. Wait
    def wait(self) -> list:
        waiting = list(self.running) + self.pool.pending_refs()
        if not waiting:
            time.sleep(0.5)
            return []
        return self.pool.backend.wait(waiting, 0.5)

    # 4. Take in what came back
    def take_in(self, refs: list) -> None:
        for ref in refs:
            if ref in self.running:
                self.unit_returned(ref)
            else:
                self.worker_started(ref)

    def worker_started(self, ref) -> None:
        try:
            info = self.pool.backend.result(ref)
        except (WorkerLost, UnitFailed) as err:
            self.counters["worker_deaths"] += 1
            if not self.pool.replace(ref):
                self.outcome.stopped = f"workers keep dying ({error_line(err)})"
        else:
            # Workers unpickle the driver's classes by module path: a node with another
            # farm would fail in ways that read as random deaths, or render differently.
            if info.get("farm") != __version__:
                self.outcome.stopped = (
                    f"worker {info.get('worker', '?')} runs farm {info.get('farm', '(unknown)')}"
                    f", this driver farm {__version__}; install one farm version on every "
                    "node, then resume"
                )
                return
            self.pool.mark_ready(ref, info)
        if self.first_ready is None and self.pool.ready_slots():
            self.first_ready = time.monotonic()

    def unit_returned(self, ref) -> None:
        slot, unit, attempt = self.running.pop(ref)
        slot.in_flight -= 1
        try:
            report: UnitReport = self.pool.backend.result(ref)
        except WorkerLost as err:
            self.worker_died(slot, err)
            _retry(unit, attempt, self.retries, self.outcome, self.counters, "its worker died")
            return
        except UnitFailed as err:
            self.unit_failed(unit, err)
            return
        self.failures_in_a_row = 0
        account(slot, unit, report, self.counters)
        self.outcome.flagged += report.flagged
        self.outcome.images += report.images
        self.outcome.units += 1
        self.progress.update(report.images)

    def worker_died(self, slot: Slot, err: Exception) -> None:
        """The worker process or its node died: replace it once, however many of its
        units in flight report the death."""
        if not self.pool.owns(slot):
            return
        self.counters["worker_deaths"] += 1
        if slot.stream:
            slot.stream.holders.discard(slot.id)
        if not self.pool.replace(slot):
            self.outcome.stopped = f"workers keep dying ({error_line(err)})"

    def unit_failed(self, unit: Unit, err: Exception) -> None:
        """A unit that failed by itself is recorded, not retried."""
        self.outcome.failed_items += [i.item_id for i in unit.items]
        self.outcome.errors.append(f"unit {unit.unit_id}: {error_line(err)}")
        self.counters["failures"] += 1
        self.failures_in_a_row += 1
        if getattr(err, "stops", False):
            self.outcome.stopped = str(err)  # names the store and what to do
        elif self.failures_in_a_row >= max(4, 2 * self.workers):
            # Storage down or a broken model: every unit would fail alike.
            self.outcome.stopped = f"{self.failures_in_a_row} units failed in a row"

    # 5. Record
    def summary(self) -> dict:
        counters = dict(self.counters)
        counters["seconds"] = round(self.outcome.seconds, 3)
        counters["workers"] = self.workers
        slots = self.pool.all_slots
        counters["images_per_worker"] = [s.images for s in slots if s.images]
        counters["worker_details"] = [s.detail() for s in slots if s.ready or s.units]
        return counters

    def say(self, text: str) -> None:
        self.progress.clear()
        self.echo(text)


def _report(outcome: Outcome, echo: Callable[[str], object]) -> None:
    for error in outcome.errors[:10]:
        echo(f"failed: {error}")
    if len(outcome.errors) > 10:
        echo(f"… and {len(outcome.errors) - 10} more failed units")
    if outcome.flagged:
        echo(f"flagged {len(outcome.flagged)} images (NaN, clipped, flat or overdriven output):")
        for item_id, cell, flags in outcome.flagged[:20]:
            echo(f"  {item_id}  {cell}: {', '.join(flags)}")
        if len(outcome.flagged) > 20:
            echo(f"  … and {len(outcome.flagged) - 20} more (the rows' `flags` column)")
    if outcome.stopped:
        echo(f"stopped: {outcome.stopped}")
    if outcome.interrupted:
        echo("interrupted: finished units are kept; resume renders the rest")


def _retry(unit: Unit, attempt: int, retries: deque, outcome: Outcome, counters: dict,
           why: str) -> None:  # fmt: skip
    if attempt < MAX_ATTEMPTS:
        counters["retries"] += 1
        retries.append((unit, attempt + 1))
    else:
        counters["failures"] += 1
        outcome.failed_items += [i.item_id for i in unit.items]
        outcome.errors.append(f"unit {unit.unit_id}: {why} {attempt} times")


def _describe(resources: dict) -> str:
    if resources.get("num_gpus"):
        return f"{resources['num_gpus']} GPU each"
    return f"{resources['num_cpus']} CPU each"
