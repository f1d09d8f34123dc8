"""`farm rerender`: render one stored row again and say whether the bytes match.

The item comes back from job.json (spec, model and LoRA files, all checked against the
job's fingerprint) and renders in this process, into a scratch folder: the job itself is
never touched. It renders again inside its original pipeline call: the items the row
lists in `batch_items`, in their order. Bytes match when the device matches the
original's and, on CPU, the torch thread count (the row records it and the rerender uses
it). Across GPU kinds, thread counts or a compiled denoiser, kernels differ slightly,
and the report says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.plan.items import Unit
from farm.plan.stored import plan_fingerprint, spec_from_job
from farm.plan.sweep import expand, make_plan
from farm.records.job_doc import JobError, read_job
from farm.records.parts import decode_part, part_key, read_rows
from farm.run.job import job_context
from farm.storage.store import LocalStore, Store
from farm.tenancy.policy import enforce_plan
from farm.tenancy.tenants import Tenant


@dataclass
class Rerender:
    item_id: str
    match: bool
    stored_sha256: str
    new_sha256: str
    device: str
    original: str  # where and how the stored image was rendered
    image: bytes
    threads: int  # torch threads the rerender ran with
    batch: int = 1  # items in the call it rendered in again


def rerender(store: Store, item_id: str, device: str | None = None,
             tenant: Tenant | None = None, doc: dict | None = None) -> Rerender:  # fmt: skip
    """Render `item_id` of the job in `store` again; compare with the stored image. A
    tenant's job (`tenant`, from farm.run.job.stored_policy) renders only inside the tenant's
    caps. `doc` is the job's job.json when the caller has read it already."""
    doc = read_job(store) if doc is None else doc
    spec = spec_from_job(doc, store.url)
    plan = make_plan(spec)
    # A tenant can rewrite its own job.json: what renders is held to the policy as it is.
    enforce_plan(plan, tenant)
    matches = [r for r in read_rows(store).to_pylist() if r["item_id"] == item_id]
    if not matches:
        raise JobError(f"{store.url}: no row for item {item_id}; `farm status` lists the job")
    (row,) = matches
    if plan_fingerprint(plan) != doc.get("fingerprint"):
        raise JobError(
            f"{store.url}: the model or LoRA files differ from the job's; rerender needs "
            "the files the job rendered with"
        )
    # The whole pipeline call the image came from, in its order: a batched call
    # reproduces single ones only up to kernel numerics, and itself bit for bit.
    call_ids = list(row.get("batch_items") or [item_id])
    wanted = set(call_ids)
    found = {i.item_id: i for i in expand(plan) if i.item_id in wanted}
    if item_id not in found:
        raise JobError(f"{store.url}: item {item_id} is not in the job's plan")
    item = found[item_id]
    call = tuple(found[i] for i in call_ids if i in found)
    from farm.worker.render_worker import RenderWorker

    worker = RenderWorker(device)
    with tempfile.TemporaryDirectory(prefix="farm-rerender-") as scratch:
        target = LocalStore(Path(scratch))
        ctx = dataclasses.replace(job_context(plan, store), store_url=target.url)
        render = dataclasses.replace(ctx.render, batch=len(call), compile=False)
        ctx = dataclasses.replace(ctx, render=render)
        unit = Unit(f"rerender-{item_id}", tuple(sorted(n for n, _ in item.loras)), call)
        # On CPU the last bit of a pixel depends on the torch thread count: use the row's.
        with worker.cpu_threads(row["threads"]):
            worker.render(unit, ctx, attempt=row["attempt"] or 1)
        image = target.get(row["image_key"])
        rows = decode_part(target.get(part_key(unit.unit_id)), ["item_id", "threads"])
        again = next(r for r in rows.to_pylist() if r["item_id"] == item_id)
    new = hashlib.sha256(image).hexdigest()
    original = f"{row['gpu'] or 'cpu'} at batch {row['batch_size']} on {row['worker']}"
    if row["threads"]:
        original += f" with {row['threads']} thread" + ("s" if row["threads"] > 1 else "")
    return Rerender(item_id, new == row["image_sha256"], row["image_sha256"], new,
                    worker.device.label or worker.device.name, original, image,
                    again["threads"], len(call))  # fmt: skip


def write_out(path: Path, data: bytes) -> None:
    """`rerender --out`: write beside the target, then rename over it, so a link planted
    at the path is replaced, never written through."""
    import os
    import secrets

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
