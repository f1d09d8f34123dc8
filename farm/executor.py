"""The executor: a pool of RenderWorker actors on Ray, fed units with adapter affinity.

Each adapter set of the sweep is a stream of units. A worker stays on one stream until
it runs dry, then joins the stream with the most work per worker, so each LoRA is loaded
on no more workers than it takes to keep them all busy. Each worker holds at most
IN_FLIGHT units so the next one is queued while the current one renders. A unit whose
worker died is sent again elsewhere (up to MAX_ATTEMPTS); a unit that fails by itself is
recorded as failed and the job goes on.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from farm.progress import Progress
from farm.sweep import UNIT_SIZE, Unit, UnitStream
from farm.worker import JobContext, UnitReport

IN_FLIGHT = 2
MAX_ATTEMPTS = 3
# A worker whose stream ran dry joins a stream other workers hold only when it has at
# least this many units per holder left: loading adapters for one last unit costs more
# than it saves.
STEAL_MIN = 4
# Start dispatching once every worker is up, or this long after the first one is, so
# early workers don't take every adapter set before the others arrive.
READY_GRACE = 30.0
# With no worker alive for this long (a node lost and no room for a replacement), stop.
NO_WORKER_TIMEOUT = float(os.environ.get("FARM_NO_WORKER_TIMEOUT", "300"))
# Environment the workers need that is not a secret; credentials come from the nodes.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "HF_HUB_OFFLINE", "FARM_HOME", "FARM_DTYPE")  # fmt: skip


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


@dataclass
class Stream:
    """One adapter set's units and the workers currently on it."""

    adapters: tuple[str, ...]
    units: Iterable[Unit]
    left: int  # planned units not yet dispatched (an estimate on resume)
    holders: set[int] = field(default_factory=set)
    buffered: deque = field(default_factory=deque)
    dry: bool = False

    def take(self) -> Unit | None:
        if self.empty:
            return None
        self.left = max(0, self.left - 1)
        return self.buffered.popleft()

    @property
    def empty(self) -> bool:
        # Pulls one unit ahead: a stream is empty only once its iterator is exhausted.
        if not self.buffered and not self.dry:
            unit = next(self.units, None)  # type: ignore[call-overload]
            if unit is None:
                self.dry, self.left = True, 0
            else:
                self.buffered.append(unit)
        return not self.buffered


@dataclass
class Slot:
    """One worker actor and what the scheduler knows about it."""

    id: int
    actor: object
    ready_ref: object = None
    ready: bool = False
    info: dict = field(default_factory=dict)
    stream: Stream | None = None
    in_flight: int = 0
    images: int = 0
    units: int = 0
    adapter_loads: int = 0
    pipeline_loads: int = 0
    loaded: set = field(default_factory=set)  # adapter names loaded in this worker
    rendered: set = field(default_factory=set)  # adapter sets it rendered units of

    def detail(self) -> dict:
        return {
            "worker": self.info.get("worker", f"worker-{self.id}"),
            "node": self.info.get("node", ""),
            "gpu": self.info.get("gpu", ""),
            "images": self.images,
            "units": self.units,
            "pipeline_loads": self.pipeline_loads,
            "adapter_loads": self.adapter_loads,
            "adapters_loaded": sorted(self.loaded),
            "adapter_sets_rendered": sorted(list(s) for s in self.rendered),
        }


def start_ray(address: str | None, num_gpus: int | None = None) -> None:
    """Connect to a cluster, or start a private local Ray: no dashboard, no Jobs API, and
    token authentication."""
    if not address and "ray" not in sys.modules and not os.environ.get("RAY_AUTH_MODE"):
        # The private Ray's GCS listens on every interface: a token known only to this
        # process tree keeps other hosts out. It lives in the environment, never on disk
        # (left to itself, Ray saves a generated one under ~/.ray), and Ray reads it when
        # first imported.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    runtime_env = {"env_vars": env} if env else None
    # ray.init replaces the SIGTERM handler with an immediate exit; the CLI's handler stops
    # like Ctrl-C (units in flight finish, the run is recorded), so put it back.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        _join(address, runtime_env)
    else:
        # "local": a private instance, even when `ray start` left a cluster on this machine
        # (a bare ray.init() would join that one).
        ray.init(
            address="local",
            include_dashboard=False,
            num_gpus=num_gpus,
            logging_level="WARNING",
            log_to_driver=True,
        )
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


class ClusterError(ValueError):
    """A Ray cluster that cannot be reached or joined (exit 2)."""


def _join(address: str, runtime_env: dict | None) -> None:
    """ray.init on a cluster, or a one-line ClusterError that says what to fix."""
    import ray

    _check_reachable(address)
    # While it retries, Ray's C++ client prints a warning a second to stderr; keep those
    # out of the way and let the outcome speak (replayed when joining works).
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True,
                     runtime_env=runtime_env)  # fmt: skip
            failure = None
        except (ConnectionError, RuntimeError) as err:
            failure = err
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        said = captured.read().decode(errors="replace")
    if failure is None:
        sys.stderr.write(said)
        return
    if "InvalidAuthToken" in said or "Unauthenticated" in said:
        from farm.submit import TOKEN_HINT

        raise ClusterError(f"--address {address}: {TOKEN_HINT}")
    raise ClusterError(f"--address {address}: could not join the Ray cluster there "
                       f"({_first_line(failure)})")  # fmt: skip


def _check_reachable(address: str) -> None:
    # Ray keeps retrying an address where nothing listens for minutes; a plain TCP
    # connect answers at once.
    if address.startswith(("http://", "https://")):
        raise ClusterError(
            f"--address {address}: that is a Jobs API address; `farm submit SPEC --address "
            f"{address}` runs a job there (`farm run --address` takes the cluster's HOST:6379, "
            "from a machine that is a Ray node)"
        )
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if not target or "://" in target:
        return  # `auto` on a node finds its cluster itself; ray:// is Ray Client's
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected HOST:PORT (the cluster's GCS "
                           "address, usually port 6379)")  # fmt: skip
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise ClusterError(
            f"--address {address}: no Ray cluster answers at {target} "
            f"({err.strerror or type(err).__name__}); check the host and port (6379), or "
            "give `farm submit` the cluster's Jobs API address"
        ) from None


def worker_layout(workers: int | None, gpus_per_worker: float | None) -> tuple[int, dict]:
    """How many workers and what each asks Ray for: GPUs when the cluster has them."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # GPUs asked for explicitly are requested even when none is up yet: an autoscaling
    # cluster adds GPU nodes for the pending workers.
    if (gpus and gpus_per_worker != 0) or gpus_per_worker:
        per = gpus_per_worker or 1.0
        count = workers or max(1, int(gpus / per))
        return count, {"num_gpus": per, "num_cpus": 1}
    count = workers or max(1, cpus // 2)
    return count, {"num_cpus": max(1, cpus // count) if count <= cpus else 1}


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
) -> Outcome:
    """Render every unit on a pool of workers; returns counts, failures and counters."""
    start_ray(address)
    import ray

    from farm.worker import RenderWorker

    count, resources = worker_layout(workers, gpus_per_worker)
    # Two concurrent calls per actor: one renders while the other finishes its uploads.
    remote = ray.remote(max_restarts=0, max_concurrency=IN_FLIGHT)(RenderWorker)
    ids = iter(range(1 << 30))

    def new_slot() -> Slot:
        # A worker that finds no GPU (fake GPUs, CPU nodes) renders with its CPU share.
        actor = remote.options(**resources).remote(None, int(resources["num_cpus"]))
        return Slot(next(ids), actor, ready_ref=actor.ready.remote())

    pool = Pool([new_slot() for _ in range(count)], new_slot, max_replacements=2 * count + 2)
    echo(f"rendering {total} images on {count} workers ({_describe(resources)})")
    outcome = Outcome()
    counters = {"pipeline_loads": 0, "adapter_loads": 0, "retries": 0, "failures": 0,
                "worker_deaths": 0}  # fmt: skip
    progress = progress or Progress(total, echo)
    queue = [Stream(s.adapters, iter(s.units), -(-s.items // UNIT_SIZE)) for s in streams]
    retries: deque[tuple[Unit, int]] = deque()
    running: dict = {}  # ObjectRef -> (slot, unit, attempt)
    t0 = time.perf_counter()
    failures_in_a_row = 0
    stopping = False
    first_ready = None
    last_alive = time.monotonic()

    def say(text: str) -> None:
        progress.clear()
        echo(text)

    try:
        while True:
            try:
                if not stopping:
                    dispatch_ready = pool.all_ready or (
                        first_ready is not None and time.monotonic() - first_ready > READY_GRACE
                    )
                    if dispatch_ready:
                        for slot in pool.ready_slots():
                            while slot.in_flight < IN_FLIGHT:
                                picked = _next_unit(slot, queue, retries)
                                if picked is None:
                                    break
                                unit, attempt = picked
                                progress.begin()
                                ref = slot.actor.render.remote(unit, ctx, attempt)
                                running[ref] = (slot, unit, attempt)
                                slot.in_flight += 1
                    if not running and not retries and all(s.empty for s in queue):
                        break
                if stopping and not running:
                    break
                if pool.ready_slots():
                    last_alive = time.monotonic()
                elif time.monotonic() - last_alive > NO_WORKER_TIMEOUT:
                    outcome.stopped = (
                        f"no worker has been alive for {NO_WORKER_TIMEOUT:.0f}s: the cluster "
                        f"has no room for a worker ({_describe(resources)})"
                    )
                    break
                waiting = list(running) + pool.pending_refs()
                if not waiting:
                    time.sleep(0.5)
                    continue
                done, _ = ray.wait(waiting, num_returns=1, timeout=0.5)
                for ref in done:
                    if ref not in running:
                        try:
                            pool.mark_ready(ref, ray.get(ref))
                        except ray.exceptions.RayError as err:
                            counters["worker_deaths"] += 1
                            if not pool.replace(ref):
                                outcome.stopped = f"workers keep dying ({_first_line(err)})"
                        if first_ready is None and pool.ready_slots():
                            first_ready = time.monotonic()
                        continue
                    slot, unit, attempt = running.pop(ref)
                    slot.in_flight -= 1
                    try:
                        report: UnitReport = ray.get(ref)
                    except ray.exceptions.RayActorError as err:
                        # The worker process or its node died: replace it, send the unit
                        # again. Each unit in flight on it reports the death; replace once.
                        if pool.owns(slot):
                            counters["worker_deaths"] += 1
                            if slot.stream:
                                slot.stream.holders.discard(slot.id)
                            if not pool.replace(slot):
                                outcome.stopped = f"workers keep dying ({_first_line(err)})"
                        _retry(unit, attempt, retries, outcome, counters, "its worker died")
                        continue
                    except ray.exceptions.RayTaskError as err:
                        outcome.failed_items += [i.item_id for i in unit.items]
                        outcome.errors.append(f"unit {unit.unit_id}: {_first_line(err)}")
                        counters["failures"] += 1
                        failures_in_a_row += 1
                        if failures_in_a_row >= max(4, 2 * count):
                            # Storage down or a broken model: every unit would fail alike.
                            outcome.stopped = f"{failures_in_a_row} units failed in a row"
                        continue
                    failures_in_a_row = 0
                    _account(slot, unit, report, counters)
                    outcome.flagged += report.flagged
                    outcome.images += report.images
                    outcome.units += 1
                    progress.update(report.images)
                if outcome.stopped:
                    break
                progress.show(busy=sum(s.in_flight > 0 for s in pool.slots), workers=count)
            except KeyboardInterrupt:
                if stopping:
                    raise
                stopping = outcome.interrupted = True
                say(
                    f"stopping: waiting for {len(running)} units in flight to finish "
                    "(Ctrl-C again to stop now)"
                )
    except KeyboardInterrupt:
        say("stopped now: units in flight render again on resume")
    finally:
        progress.finish()
        outcome.seconds = time.perf_counter() - t0
        counters["seconds"] = round(outcome.seconds, 3)
        counters["workers"] = count
        counters["images_per_worker"] = [s.images for s in pool.all_slots if s.images]
        counters["worker_details"] = [s.detail() for s in pool.all_slots if s.ready or s.units]
        outcome.counters = counters
        pool.kill()
    for error in outcome.errors[:10]:
        echo(f"failed: {error}")
    if len(outcome.errors) > 10:
        echo(f"… and {len(outcome.errors) - 10} more failed units")
    if outcome.flagged:
        echo(f"flagged {len(outcome.flagged)} images (NaN, clipped or flat output):")
        for item_id, cell, flags in outcome.flagged[:20]:
            echo(f"  {item_id}  {cell}: {', '.join(flags)}")
        if len(outcome.flagged) > 20:
            echo(f"  … and {len(outcome.flagged) - 20} more (the rows' `flags` column)")
    if outcome.stopped:
        echo(f"stopped: {outcome.stopped}")
    if outcome.interrupted:
        echo("interrupted: finished units are kept; resume renders the rest")
    return outcome


class Pool:
    """The live workers, their start-up, and replacements for the ones that die."""

    def __init__(self, slots: list[Slot], new_slot: Callable[[], Slot], max_replacements: int):
        self.slots = slots
        self.all_slots = list(slots)
        self.new_slot = new_slot
        self.replacements_left = max_replacements

    @property
    def all_ready(self) -> bool:
        return all(s.ready for s in self.slots)

    def ready_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.ready]

    def pending_refs(self) -> list:
        return [s.ready_ref for s in self.slots if not s.ready]

    def owns(self, slot: Slot) -> bool:
        return any(s is slot for s in self.slots)

    def mark_ready(self, ref, info: dict) -> None:
        for slot in self.slots:
            if slot.ready_ref == ref:
                slot.ready, slot.info = True, info

    def replace(self, dead) -> bool:
        """Swap a dead slot (or the slot whose start-up failed) for a new worker."""
        import ray

        for index, slot in enumerate(self.slots):
            if slot is dead or slot.ready_ref == dead:
                ray.kill(slot.actor, no_restart=True)
                if self.replacements_left <= 0:
                    del self.slots[index]
                    return bool(self.slots)
                self.replacements_left -= 1
                self.slots[index] = self.new_slot()
                self.all_slots.append(self.slots[index])
                return True
        return True

    def kill(self) -> None:
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)


def _next_unit(slot: Slot, streams: list[Stream], retries: deque) -> tuple[Unit, int] | None:
    # 1. Units sent back by a dead worker, preferring ones whose adapters this one holds.
    if retries:
        for i, (unit, attempt) in enumerate(retries):
            if set(unit.adapters) <= slot.loaded:
                del retries[i]
                return unit, attempt
        return retries.popleft()
    # 2. The worker's own stream.
    if slot.stream is not None:
        unit = slot.stream.take()
        if unit is not None:
            return unit, 1
        slot.stream.holders.discard(slot.id)
        slot.stream = None
    # 3. The stream with the most work per worker; those this worker holds win ties. A
    # fresh worker takes any work; one that already rendered only joins a held stream
    # with enough left to be worth loading its adapters.
    fresh = slot.units == 0 and slot.in_flight == 0
    best, best_score = None, -1.0
    for stream in streams:
        if stream.empty:
            continue
        holders = len(stream.holders)
        left = max(stream.left, len(stream.buffered))
        if holders and not fresh and left < STEAL_MIN * holders:
            continue
        score = max(stream.left, 1) / (holders + 1)
        if set(stream.adapters) <= slot.loaded:
            score *= 1.5
        if score > best_score:
            best, best_score = stream, score
    if best is None:
        return None
    best.holders.add(slot.id)
    slot.stream = best
    unit = best.take()
    return (unit, 1) if unit is not None else None


def _account(slot: Slot, unit: Unit, report: UnitReport, counters: dict) -> None:
    slot.images += report.images
    slot.units += 1
    slot.pipeline_loads += report.pipeline_loads
    slot.adapter_loads += report.adapter_loads
    slot.loaded.update(report.loaded_adapters)
    if report.images:
        slot.rendered.add(unit.adapters)
    counters["pipeline_loads"] += report.pipeline_loads
    counters["adapter_loads"] += report.adapter_loads


def _retry(unit: Unit, attempt: int, retries: deque, outcome: Outcome, counters: dict,
           why: str) -> None:  # fmt: skip
    if attempt < MAX_ATTEMPTS:
        counters["retries"] += 1
        retries.append((unit, attempt + 1))
    else:
        counters["failures"] += 1
        outcome.failed_items += [i.item_id for i in unit.items]
        outcome.errors.append(f"unit {unit.unit_id}: {why} {attempt} times")


def _first_line(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    return (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:300]


def _describe(resources: dict) -> str:
    if resources.get("num_gpus"):
        return f"{resources['num_gpus']} GPU each"
    return f"{resources['num_cpus']} CPU each"
