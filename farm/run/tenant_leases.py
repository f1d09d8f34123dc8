"""A tenant's concurrent-job cap: each running job holds a lease under the tenant's prefix.

A lease is `{prefix}/.running/{job_id}.json`, rewritten every HEARTBEAT seconds while the
job runs and deleted when it ends. A lease not rewritten for STALE seconds belongs to a
job that was killed, and no longer counts. Job names start with a letter or digit, so
`.running` never clashes with a job.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

from farm.spec.errors import SpecError
from farm.storage import open_store
from farm.storage.store import StoreError
from farm.tenancy.tenants import Tenant

LEASES = ".running/"
HEARTBEAT = 30.0
STALE = 120.0  # four missed heartbeats


def running_jobs(tenant: Tenant, now: float | None = None) -> dict[str, float]:
    """{job_id: start time} of the tenant's jobs whose lease is fresh.

    A lease the store cannot read is not skipped: that would let the tenant past its cap
    while the store is down. The count fails closed with a StoreError (exit 2).
    """
    store = open_store(tenant.output)
    now = time.time() if now is None else now
    live = {}
    for key in store.list(LEASES):
        try:
            doc = json.loads(store.get(key))
            heartbeat, started = float(doc["heartbeat"]), float(doc["started"])
            job_id = str(doc["job_id"])
        except FileNotFoundError:
            continue  # its job ended between the listing and the read
        except (ValueError, KeyError, TypeError):
            continue  # not a lease farm wrote: both stores write whole objects
        except StoreError as err:
            raise StoreError(f"tenant {tenant.name}: cannot count its running jobs ({err}); "
                             "try again once the store answers") from None  # fmt: skip
        if now - heartbeat < STALE:
            live[job_id] = started
    return live


@contextlib.contextmanager
def job_slot(tenant: Tenant | None, job_id: str) -> Iterator[None]:
    """Hold one of the tenant's job slots while the block runs; SpecError (exit 2, before
    anything of the job is written) when the cap is reached or the job already runs. No
    tenant, or no cap: nothing to hold."""
    cap = tenant.caps.jobs if tenant is not None else None
    if cap is None:
        yield
        return
    store = open_store(tenant.output)
    key = f"{LEASES}{job_id}.json"
    others = running_jobs(tenant)
    if job_id in others:
        raise SpecError(f"job {job_id} of tenant {tenant.name} is already running; wait for it "
                        f"(a killed run's lease lapses after {STALE:g} s)")  # fmt: skip
    if len(others) >= cap:
        raise SpecError(f"tenant {tenant.name} already runs {len(others)} jobs, its cap "
                        f"({', '.join(sorted(others))}); wait for one to finish")  # fmt: skip
    started = time.time()

    def beat() -> None:
        store.put(key, json.dumps({"job_id": job_id, "started": started,
                                   "heartbeat": time.time()}).encode())  # fmt: skip

    beat()
    # Two jobs starting at once both pass the count above; the later lease gives way.
    live = running_jobs(tenant)
    ranked = sorted(live, key=lambda j: (live[j], j))  # the earliest starts keep their slots
    if job_id in live and ranked.index(job_id) >= cap:
        store.delete(key)
        raise SpecError(f"tenant {tenant.name} already runs {cap} jobs, its cap; wait for one "
                        "to finish")  # fmt: skip
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(HEARTBEAT):
            with contextlib.suppress(Exception):  # an outage: the next beat tries again
                beat()

    thread = threading.Thread(target=keep_alive, name="farm-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            store.delete(key)
