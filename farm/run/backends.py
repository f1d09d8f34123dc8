"""Where the executor's workers run: Ray actors, or RenderWorkers in this process.

The dispatch loop (farm/run/executor.py) is the same for both; a backend starts workers,
hands them units and says what came back. Ray's backend runs each worker in a process of
its own, anywhere on the cluster, and sees a worker or node die. The local backend
(`farm run --local`) keeps the worker in the driver's process: no Ray to start, nothing
to place, for a small job on one machine.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures

from farm.run.cluster import error_line
from farm.storage.store import StoreRefused

# Two units at once per worker: one renders while the other finishes its uploads.
IN_FLIGHT = 2


class WorkerLost(Exception):
    """The worker process or its node died (or never started): its units go elsewhere."""


class UnitFailed(Exception):
    """The unit failed by itself: recorded, not retried. `stops` when its cause would fail
    every unit alike (a store that refuses writes): the run stops at once."""

    def __init__(self, message: str, stops: bool = False):
        super().__init__(message)
        self.stops = stops


class RayBackend:
    """Each worker a Ray actor with `resources` (num_cpus, num_gpus)."""

    def __init__(self, resources: dict):
        import ray

        from farm.worker.render_worker import RenderWorker

        self.resources = resources
        self.remote = ray.remote(max_restarts=0, max_concurrency=IN_FLIGHT)(RenderWorker)

    def start(self) -> tuple[object, object]:
        # A worker that finds no GPU (fake GPUs, CPU nodes) renders with its CPU share.
        actor = self.remote.options(**self.resources).remote(None, int(self.resources["num_cpus"]))
        return actor, actor.ready.remote()

    def render(self, actor, unit, ctx, attempt: int):
        return actor.render.remote(unit, ctx, attempt)

    def wait(self, handles: list, timeout: float) -> list:
        import ray

        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        return done

    def result(self, handle):
        """What the call returned; WorkerLost or UnitFailed if it did not."""
        import ray

        try:
            return ray.get(handle)
        except ray.exceptions.RayActorError as err:
            raise WorkerLost(error_line(err)) from err
        except ray.exceptions.RayTaskError as err:
            stops = isinstance(getattr(err, "cause", None), StoreRefused)
            raise UnitFailed(error_line(err), stops) from err
        except ray.exceptions.RayError as err:  # a worker that could not start
            raise WorkerLost(error_line(err)) from err

    def stop(self, actor) -> None:
        import ray

        ray.kill(actor, no_restart=True)

    def settle(self, timeout: float) -> None:
        """Nothing to wait for: a killed actor's process is gone."""


class LocalWorker:
    """A RenderWorker in this process, once it has started."""

    worker = None


class LocalBackend:
    """Workers in this process. Each call runs on a thread of its own (a worker still
    renders one call at a time, on its torch thread); stopping a worker makes it give up
    its units at the next pipeline call, as a killed process would."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.calls: list[Future] = []

    def start(self) -> tuple[LocalWorker, Future]:
        from farm.worker.render_worker import RenderWorker

        actor = LocalWorker()

        def build() -> dict:
            actor.worker = RenderWorker(self.device)
            return actor.worker.ready()

        return actor, self._call(build)

    def render(self, actor: LocalWorker, unit, ctx, attempt: int) -> Future:
        return self._call(actor.worker.render, unit, ctx, attempt)

    def _call(self, fn, *args) -> Future:
        self.calls = [f for f in self.calls if not f.done()]
        self.calls.append(_on_thread(fn, *args))
        return self.calls[-1]

    def settle(self, timeout: float) -> None:
        """Wait up to `timeout` s for stopped workers' calls to give up. A unit stopped
        mid-way may be loading a LoRA, and diffusers loads under process-wide patches of
        torch that a second run in this process would otherwise meet."""
        wait_futures(self.calls, timeout=timeout)

    def wait(self, handles: list, timeout: float) -> list:
        done, _ = wait_futures(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Future):
        try:
            return handle.result()
        except Exception as err:
            raise UnitFailed(error_line(err), isinstance(err, StoreRefused)) from err

    def stop(self, actor: LocalWorker) -> None:
        if actor.worker is not None:
            actor.worker.abandon()


def _on_thread(fn, *args) -> Future:
    # A daemon thread, so a second Ctrl-C never waits for a unit to finish before exit.
    future: Future = Future()
    future.set_running_or_notify_cancel()

    def go() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001 - handed to the loop, which names it
            future.set_exception(err)

    threading.Thread(target=go, name="farm-unit", daemon=True).start()
    return future
