"""`farm rerender`: render one stored row again and say whether the bytes match.

The item comes back from job.json (spec, model and LoRA files, all checked against the
job's fingerprint) and renders in this process, into a scratch folder: the job itself is
never touched. Bytes match when the device and batch size match the original's and, on
CPU, the torch thread count: the row records it and the rerender uses it. Across GPU
kinds, batch sizes or thread counts kernels differ slightly, and the report says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.job import JobError, job_context, plan_fingerprint, read_job, spec_from_job
from farm.records import decode_part, part_key, read_rows
from farm.store import LocalStore, Store
from farm.sweep import Unit, expand, make_plan


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


def rerender(store: Store, item_id: str, device: str | None = None) -> Rerender:
    """Render `item_id` of the job in `store` again; compare with the stored image."""
    doc = read_job(store)
    matches = [r for r in read_rows(store).to_pylist() if r["item_id"] == item_id]
    if not matches:
        raise JobError(f"{store.url}: no row for item {item_id}; `farm status` lists the job")
    (row,) = matches
    spec = spec_from_job(doc, store.url)
    plan = make_plan(spec)
    if plan_fingerprint(plan) != doc.get("fingerprint"):
        raise JobError(
            f"{store.url}: the model or LoRA files differ from the job's; rerender needs "
            "the files the job rendered with"
        )
    item = next((i for i in expand(plan) if i.item_id == item_id), None)
    if item is None:
        raise JobError(f"{store.url}: item {item_id} is not in the job's plan")
    from farm.worker import RenderWorker

    worker = RenderWorker(device)
    with tempfile.TemporaryDirectory(prefix="farm-rerender-") as scratch:
        target = LocalStore(Path(scratch))
        ctx = dataclasses.replace(job_context(plan, store), store_url=target.url)
        # The original batch size: batched calls reproduce single ones only up to kernels.
        ctx = dataclasses.replace(ctx, render=dataclasses.replace(ctx.render, batch=1))
        unit = Unit(f"rerender-{item_id}", tuple(sorted(n for n, _ in item.loras)), (item,))
        # On CPU the last bit of a pixel depends on the torch thread count: use the row's.
        with worker.cpu_threads(row["threads"]):
            worker.render(unit, ctx, attempt=row["attempt"] or 1)
        image = target.get(row["image_key"])
        (again,) = decode_part(target.get(part_key(unit.unit_id)), ["threads"]).to_pylist()
    new = hashlib.sha256(image).hexdigest()
    original = f"{row['gpu'] or 'cpu'} at batch {row['batch_size']} on {row['worker']}"
    if row["threads"]:
        original += f" with {row['threads']} thread" + ("s" if row["threads"] > 1 else "")
    return Rerender(item_id, new == row["image_sha256"], row["image_sha256"], new,
                    worker.device.label or worker.device.name, original, image,
                    again["threads"])  # fmt: skip
