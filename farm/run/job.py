"""Running a job in its store: open it, render what its parts lack, record the run.

`farm run` and `farm resume` take the same path: open the job (write job.json or check
it against the spec), subtract the item_ids already in parts/, render the rest, compact.
job.json itself is farm/records/job_doc.py; a stored job seen from planning is
farm/plan/stored.py.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata

from farm import __version__, faults
from farm.plan.model_refs import model_hash, model_name
from farm.plan.stored import Inspected, inspect_job, plan_fingerprint, spec_from_job
from farm.plan.sweep import Plan, make_plan, unit_streams
from farm.records.job_doc import read_job, write_job
from farm.records.parts import compact
from farm.spec import Spec
from farm.storage import open_store
from farm.storage.store import Store, StoreError


@dataclass
class RunResult:
    job_url: str
    planned: int
    already_done: int
    rendered: int = 0
    failed_items: list[str] = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    stopped: str = ""  # why rendering stopped before every unit was tried
    flagged: list = field(default_factory=list)  # (item_id, cell, flags) of broken images

    @property
    def ok(self) -> bool:
        return not self.failed_items and not self.interrupted and not self.stopped


def job_store(spec: Spec) -> Store:
    return open_store(spec.output).child(spec.job)


def stored_policy(store: Store, tenants) -> tuple[dict, Spec, object]:
    """A stored job's job.json, the spec it renders, and its tenant (farm.tenancy.tenants.Tenant,
    or None) with the policy checked on what job.json says now: a tenant can rewrite its
    own job.json, so its paths are checked before anything they name is read, then the
    spec. The plan's own checks (farm.tenancy.policy.enforce_plan) come where the plan
    is made."""
    import dataclasses

    from farm.storage.store import split_job_url
    from farm.tenancy.policy import check_stored, enforce

    doc = read_job(store)
    check_stored(doc, tenants)
    output, _ = split_job_url(store.url)
    spec = dataclasses.replace(spec_from_job(doc, store.url), output=output)
    return doc, spec, enforce(spec, tenants)


def open_job(plan: Plan, store: Store, echo=print,
             inspected: Inspected | None = None) -> tuple[dict, set[str]]:  # fmt: skip
    """Write job.json for a new job, or mark an existing one (this plan's) running.

    Returns the job document and the item_ids already rendered. Corrupt parts are
    removed, so their items count as missing and render again. `inspected` is the folder
    as inspect_job read it; without it, it is read here first.
    """
    seen = inspected if inspected is not None else inspect_job(plan, store)
    now = _now()
    doc = seen.doc
    if doc is None:
        doc = {
            "job_id": plan.spec.job,
            "fingerprint": plan_fingerprint(plan),
            "spec": plan.spec.to_dict(),
            "plan": plan.counts(),
            "model": {
                "ref": plan.spec.model,
                "name": model_name(plan.spec.model),
                "hash": model_hash(plan.model_fingerprint),
                "fingerprint": plan.model_fingerprint,
                "family": plan.model.family.name if plan.model else None,
            },
            "adapters": [
                {
                    "name": a.name,
                    "sha256": a.sha256,
                    "shorthash": a.shorthash,
                    **(
                        {
                            "applied": a.applied,
                            "dropped": a.dropped,
                            "dropped_names": list(a.dropped_names),
                        }
                        if a.applied is not None
                        else {}
                    ),
                    **(
                        {"checkpoint": {"run": a.run, "step": a.step, "epoch": a.epoch}}
                        if a.run is not None
                        else {}
                    ),
                }
                for a in plan.adapters.values()
            ],
            "versions": _versions(),
            "created_at": now,
            "runs": [],
        }
    doc.update(status="running", updated_at=now)
    write_job(store, doc)
    for key in seen.corrupt:
        echo(f"removing corrupt part {key}: its items render again")
        store.delete(key)
    return doc, seen.done


def run_job(
    spec: Spec,
    *,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    address: str | None = None,
    worker_wait: float | None = None,
    max_items: int | None = None,
    tenant=None,
    echo=print,
    local: bool = False,
) -> RunResult:
    """Plan, open the job, render the missing items on Ray (or with `local`, in this
    process), compact, record the run.

    A tenant's job (`tenant`, from farm.tenancy.policy.enforce) is held to its caps: images,
    workers, and jobs running at once."""
    from farm.tenancy.policy import enforce_plan

    plan = make_plan(spec, max_items=max_items)
    enforce_plan(plan, tenant, workers)
    store = job_store(spec)
    # Everything that can refuse the job does so before anything is written: the job
    # folder is read, the cluster joined and the worker layout checked first.
    seen = inspect_job(plan, store)
    where = {"workers": workers, "gpus_per_worker": gpus_per_worker, "address": address,
             "local": local}  # fmt: skip
    from farm.run.job_lease import check_free, job_lease
    from farm.run.tenant_leases import job_slot

    # A job another driver renders is refused before Ray starts; the lease itself is taken
    # once nothing else can refuse the run, so a refusal leaves no folder behind.
    check_free(store, spec.job)
    if not local:
        _start_ray(address, workers, gpus_per_worker)
    store.check()
    with job_slot(tenant, spec.job), job_lease(store, spec.job):
        return _run_plan(plan, store, seen, where, worker_wait, echo,
                         max_workers=tenant.caps.workers if tenant else None)  # fmt: skip


def _start_ray(address: str | None, workers: int | None, gpus_per_worker: float | None) -> None:
    from farm.run.cluster import check_layout, start_ray

    if address:
        # A cluster that can't be joined is bad input: find out before writing anything.
        start_ray(address)
    elif workers or gpus_per_worker:
        # So is asking this machine for workers it can never place.
        start_ray(None)
        check_layout(workers, gpus_per_worker)


def _run_plan(plan: Plan, store: Store, seen: Inspected, where: dict, worker_wait, echo,
              max_workers: int | None = None) -> RunResult:  # fmt: skip
    from farm.run.executor import WORKER_WAIT, execute

    spec = plan.spec
    doc, done = open_job(plan, store, echo, seen)
    result = RunResult(store.url, plan.items, len(done))
    echo(
        f"job {spec.job}: {plan.items} items in {plan.units} units, "
        f"{plan.adapter_groups} adapter groups; {len(done)} already rendered"
    )
    for a in plan.adapters.values():
        if a.dropped:  # a LoRA that only partly fits renders weaker than it says: say so
            names = ", ".join(a.dropped_names[:3]) + (", …" if a.dropped > 3 else "")
            echo(f"lora {a.name}: {a.applied} tensors apply to the model, {a.dropped} are "
                 f"dropped ({names}); `farm lora inspect FILE --model M` lists them")  # fmt: skip
    todo = plan.items - len(done)
    started = _now()
    if todo > 0:
        ctx = job_context(plan, store)
        outcome = execute(
            unit_streams(plan, done), ctx, total=todo, echo=echo,
            worker_wait=WORKER_WAIT if worker_wait is None else worker_wait,
            max_workers=max_workers, **where,
        )  # fmt: skip
        result.rendered = outcome.images
        result.failed_items = outcome.failed_items
        result.counters = outcome.counters
        result.seconds = outcome.seconds
        result.interrupted = outcome.interrupted
        result.stopped = outcome.stopped
        result.flagged = outcome.flagged
    else:
        echo("nothing to render: every item already has a row")
    faults.reach(faults.JOB_END, spec.job)
    _record(store, doc, result, started, echo)
    return result


def _record(store: Store, doc: dict, result: RunResult, started: str, echo) -> None:
    """Compact the parts into metadata.parquet and record the run in job.json."""
    try:
        rows = compact(store)
    except (StoreError, OSError) as err:
        # Rendered work is safe in parts/; only the summary files could not be written.
        echo(f"could not finish the job's metadata: {err}")
        result.stopped = result.stopped or "the store failed while finishing the job"
        return
    doc["status"] = "done" if result.ok else ("interrupted" if result.interrupted else "failed")
    if result.stopped:
        doc["stopped"] = result.stopped
    doc["updated_at"] = _now()
    doc["rows"] = rows
    doc["runs"].append({
        "started_at": started, "finished_at": doc["updated_at"], "rendered": result.rendered,
        "failed_items": len(result.failed_items), "counters": result.counters,
        "flagged": len(result.flagged),
        "flagged_cells": [{"item_id": i, "cell": c, "flags": list(f)}
                          for i, c, f in result.flagged[:100]],
    })  # fmt: skip
    write_job(store, doc)


def job_context(plan: Plan, store: Store):
    """What every worker needs to render this plan's units into `store`."""
    from farm.worker.render_worker import JobContext

    spec = plan.spec
    return JobContext(
        job_id=spec.job,
        store_url=store.url,
        model=spec.model,
        model_path=spec.model,
        model_fingerprint=plan.model_fingerprint,
        model_folder=spec.model_folder,
        model_name=model_name(spec.model),
        model_hash=model_hash(plan.model_fingerprint),
        render=spec.render,
        adapters=plan.adapters,
        tenant=spec.tenant,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    versions = {"farm": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "peft", "ray"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[pkg] = importlib_metadata.version(pkg)
    return versions
