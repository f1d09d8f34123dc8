"""The executor: a pool of RenderWorker actors on Ray, fed units with adapter affinity.

Each worker holds at most IN_FLIGHT units so the next one is queued while the current
one renders. A unit whose worker died is sent again elsewhere (up to MAX_ATTEMPTS); a
unit that fails by itself is recorded as failed and the job goes on.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from farm.sweep import Unit
from farm.worker import JobContext, UnitReport

IN_FLIGHT = 2
MAX_ATTEMPTS = 3
LOOKAHEAD = 16  # queued units scanned for one whose adapters a free worker already holds


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


@dataclass
class Slot:
    """One worker actor and what the scheduler knows about it."""

    actor: object
    adapters: tuple[str, ...] | None = None
    in_flight: int = 0
    images: int = 0


def start_ray(address: str | None, num_gpus: int | None = None) -> None:
    """Connect to a cluster, or start a private local Ray with no dashboard."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
    else:
        ray.init(
            include_dashboard=False,
            num_gpus=num_gpus,
            logging_level="WARNING",
            log_to_driver=True,
        )


def worker_layout(workers: int | None, gpus_per_worker: float | None) -> tuple[int, dict]:
    """How many workers and what each asks Ray for: GPUs when the cluster has them."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if gpus and gpus_per_worker != 0:
        per = gpus_per_worker or 1.0
        count = workers or max(1, int(gpus / per))
        return count, {"num_gpus": per, "num_cpus": 1}
    count = workers or max(1, cpus // 2)
    return count, {"num_cpus": max(1, cpus // count) if count <= cpus else 1}


def execute(
    units: Iterator[Unit],
    ctx: JobContext,
    *,
    total: int,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    address: str | None = None,
    echo=print,
) -> Outcome:
    """Render every unit on a pool of workers; returns counts, failures and counters."""
    import ray

    from farm.worker import RenderWorker

    start_ray(address)
    count, resources = worker_layout(workers, gpus_per_worker)
    threads = None if resources.get("num_gpus") else int(resources["num_cpus"])
    # Two concurrent calls per actor: one renders while the other finishes its uploads.
    remote = ray.remote(max_restarts=0, max_concurrency=IN_FLIGHT)(RenderWorker)

    def new_slot() -> Slot:
        device = None if resources.get("num_gpus") else "cpu"
        return Slot(remote.options(**resources).remote(device, threads))

    slots = [new_slot() for _ in range(count)]
    echo(f"rendering {total} images on {count} workers ({_describe(resources)})")
    outcome = Outcome(counters={"pipeline_loads": 0, "adapter_loads": 0, "retries": 0})
    progress = Progress(total, echo)
    queue: deque[tuple[Unit, int]] = deque()
    source = iter(units)
    running: dict = {}  # ObjectRef -> (slot, unit, attempt)
    t0 = time.perf_counter()
    failures_in_a_row = 0
    try:
        while not outcome.stopped:
            queue.extend((u, 1) for u in itertools.islice(source, LOOKAHEAD - len(queue)))
            for slot in slots:
                while slot.in_flight < IN_FLIGHT and queue:
                    unit, attempt = _take(queue, slot.adapters)
                    ref = slot.actor.render.remote(unit, ctx, attempt)
                    running[ref] = (slot, unit, attempt)
                    slot.in_flight += 1
                    slot.adapters = unit.adapters
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                slot, unit, attempt = running.pop(ref)
                slot.in_flight -= 1
                try:
                    report: UnitReport = ray.get(ref)
                except ray.exceptions.RayActorError:
                    # The worker process or its node died: replace it, send the unit again.
                    _replace(slots, slot, new_slot)
                    _retry(unit, attempt, queue, outcome, "its worker died")
                    continue
                except ray.exceptions.RayTaskError as err:
                    outcome.failed_items += [i.item_id for i in unit.items]
                    outcome.errors.append(f"unit {unit.unit_id}: {_first_line(err)}")
                    failures_in_a_row += 1
                    if failures_in_a_row >= max(4, 2 * count):
                        # Storage down or a broken model: every unit would fail the same way.
                        outcome.stopped = f"{failures_in_a_row} units failed in a row"
                    continue
                failures_in_a_row = 0
                slot.images += report.images
                outcome.images += report.images
                outcome.units += 1
                outcome.counters["pipeline_loads"] += report.pipeline_loads
                outcome.counters["adapter_loads"] += report.adapter_loads
                progress.update(report.images, sum(s.in_flight > 0 for s in slots))
    except KeyboardInterrupt:
        outcome.interrupted = True
        echo("interrupted: finished units are kept; resume to render the rest")
    finally:
        outcome.seconds = time.perf_counter() - t0
        outcome.counters["seconds"] = round(outcome.seconds, 3)
        outcome.counters["images_per_worker"] = [s.images for s in slots]
        outcome.counters["workers"] = count
        for slot in slots:
            ray.kill(slot.actor, no_restart=True)
    for error in outcome.errors[:10]:
        echo(f"failed: {error}")
    if len(outcome.errors) > 10:
        echo(f"… and {len(outcome.errors) - 10} more failed units")
    if outcome.stopped:
        echo(f"stopped: {outcome.stopped}")
    return outcome


def _take(queue: deque, adapters: tuple[str, ...] | None) -> tuple[Unit, int]:
    # Prefer a unit this worker already holds the adapters for; else the oldest unit.
    for i, (unit, _) in enumerate(itertools.islice(queue, LOOKAHEAD)):
        if unit.adapters == adapters:
            entry = queue[i]
            del queue[i]
            return entry
    return queue.popleft()


def _replace(slots: list[Slot], dead: Slot, new_slot) -> None:
    # Each unit that was in flight on the dead actor reports its death; replace it once.
    for index, slot in enumerate(slots):
        if slot is dead:
            slots[index] = new_slot()


def _retry(unit: Unit, attempt: int, queue: deque, outcome: Outcome, why: str) -> None:
    if attempt < MAX_ATTEMPTS:
        outcome.counters["retries"] += 1
        queue.appendleft((unit, attempt + 1))
    else:
        outcome.failed_items += [i.item_id for i in unit.items]
        outcome.errors.append(f"unit {unit.unit_id}: {why} {attempt} times")


def _first_line(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    return (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:300]


def _describe(resources: dict) -> str:
    if resources.get("num_gpus"):
        return f"{resources['num_gpus']} GPU each"
    return f"{resources['num_cpus']} CPU each"


class Progress:
    """Plain progress lines, at most one every few seconds, plus the last one."""

    def __init__(self, total: int, echo, every: float = 5.0):
        self.total, self.echo, self.every = total, echo, every
        self.done = 0
        self.start = self.last = time.perf_counter()

    def update(self, images: int, busy: int) -> None:
        self.done += images
        now = time.perf_counter()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate else float("inf")
        self.echo(
            f"  {self.done}/{self.total} images · {rate:.2f} img/s · "
            f"ETA {eta:.0f}s · {busy} workers busy",
        )
        sys.stdout.flush()
