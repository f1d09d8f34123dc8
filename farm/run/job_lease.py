"""One driver per job: a lease in the job folder while a run renders it.

Two drivers on one job would each render every unit. Parts are written once, but images
are rewritten, and two drivers with other thread counts or call sizes write other bytes,
so an image could stop matching the row that won. So a run holds `running.json` in the
job folder from before it writes job.json until the run is recorded: created once
(`put_if_absent`), rewritten every HEARTBEAT seconds, deleted at the end. A second run or
resume of the job is refused with one line naming the holder (exit 2, nothing written).

A lease whose driver is gone no longer holds: at once when that driver ran on this host
and its process has exited (a killed job resumes straight away), else once it has not been
rewritten for STALE seconds (a driver on another machine that died).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from farm.errors import FarmError
from farm.storage.store import Store, StoreError

LEASE = "running.json"
HEARTBEAT = 30.0
STALE = 120.0  # four missed heartbeats


class JobBusy(FarmError, ValueError):
    """Another driver is rendering this job (exit 2)."""


def holder(doc: dict, now: float) -> bool:
    """Whether the lease `doc` still holds the job at `now`."""
    try:
        fresh = now - float(doc["heartbeat"]) < STALE
        if doc["host"] == socket.gethostname():
            os.kill(int(doc["pid"]), 0)  # signal 0: is the process there at all
    except ProcessLookupError:
        return False  # its driver ran here and has exited
    except PermissionError:
        pass  # a process of another user: there, so judged by its heartbeat
    except (KeyError, TypeError, ValueError, OverflowError):
        return False  # not a lease farm wrote
    return fresh


def check_free(store: Store, job_id: str, clock=time.time) -> None:
    """JobBusy if a live driver holds the job; reads only, so a run can be refused before
    it starts Ray (job_lease takes the lease, and settles two drivers starting at once)."""
    doc = _read(store)
    if holder(doc, clock()):
        raise JobBusy(_busy(store, job_id, doc, clock()))


@contextlib.contextmanager
def job_lease(store: Store, job_id: str, clock=time.time) -> Iterator[None]:
    """Hold the job's lease while the block runs; JobBusy if another driver holds it."""
    me = {"holder": uuid.uuid4().hex, "job_id": job_id, "host": socket.gethostname(),
          "pid": os.getpid(), "started": clock()}  # fmt: skip

    def beat() -> bytes:
        return json.dumps(me | {"heartbeat": clock()}).encode()

    for _ in range(3):
        if store.put_if_absent(LEASE, beat()):
            break
        check_free(store, job_id, clock)
        store.delete(LEASE)  # a gone driver's lease: take the job over
    else:
        raise JobBusy(f"{store.url}/{LEASE}: job {job_id}: another driver keeps taking the "
                      "job's lease; run one `farm resume` at a time")  # fmt: skip
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(HEARTBEAT):
            with contextlib.suppress(Exception):  # an outage: the next beat tries again
                if _read(store).get("holder") != me["holder"]:
                    return  # taken over after a long stall: the parts keep it exactly-once
                store.put(LEASE, beat())

    thread = threading.Thread(target=keep_alive, name="farm-job-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            if _read(store).get("holder") == me["holder"]:
                store.delete(LEASE)


def _read(store: Store) -> dict:
    """The lease in the job folder; {} where there is none (deleted meanwhile) or it is
    damaged: neither holds the job."""
    try:
        doc = json.loads(store.get(LEASE))
    except (StoreError, OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _busy(store: Store, job_id: str, doc: dict, now: float) -> str:
    started = datetime.fromtimestamp(float(doc.get("started", now)), UTC)
    seen = max(0.0, now - float(doc["heartbeat"]))
    return (
        f"{store.url}: job {job_id} is already being rendered by the driver "
        f"{doc['host']}:{doc['pid']} (since {started:%Y-%m-%d %H:%M:%S} UTC, seen {seen:.0f}s "
        f"ago); wait for it (`farm status {store.url}`), or stop it first: a lease whose "
        f"driver died lapses after {STALE:g}s"
    )
