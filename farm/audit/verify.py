"""`farm verify` and `farm status`: answers read from the store alone."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from farm.plan.stored import stored_plan
from farm.plan.sweep import expand
from farm.records.job_doc import read_job
from farm.records.parts import METADATA, completed_items, decode_part, iter_parts
from farm.storage.store import Store


@dataclass
class Verdict:
    planned: int = 0
    rows: int = 0
    images_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def planned_items(store: Store, doc: dict) -> set[str]:
    """Every item_id the job planned, rebuilt from job.json without reading LoRA files."""
    return {item.item_id for item in expand(stored_plan(store, doc))}


def verify_job(store: Store, *, check_images: bool = True, limit: int = 20) -> Verdict:
    """Every planned item has exactly one row; every row's image exists with its sha256."""
    doc = read_job(store)
    verdict = Verdict()
    planned = planned_items(store, doc)
    verdict.planned = len(planned)
    seen: Counter[str] = Counter()
    rows: list[dict] = []
    for key, table in iter_parts(store):
        if not isinstance(table, pa.Table):
            verdict.problems.append(
                f"{key}: corrupt part ({table}); resume renders its items again"
            )
            continue
        columns = ["item_id", "image_key", "image_sha256"]
        columns += ["named_key"] if "named_key" in table.column_names else []  # later column
        part_rows = table.select(columns).to_pylist()
        seen.update(r["item_id"] for r in part_rows)
        rows += part_rows
    verdict.rows = len(rows)
    problems = verdict.problems
    missing = planned - seen.keys()
    if missing:
        problems.append(f"{len(missing)} planned items have no row (e.g. {sorted(missing)[0]}); "
                        f"run `farm resume {store.url}`")  # fmt: skip
    for item_id, n in seen.items():
        if n > 1:
            problems.append(f"item {item_id}: {n} rows (expected exactly one)")
    for item_id in seen.keys() - planned:
        problems.append(f"item {item_id}: has a row but is not in the plan")
    if check_images:
        for row in rows:
            problem = _check_image(store, row)
            verdict.images_checked += 1
            if problem:
                problems.append(problem)
    if doc.get("status") == "done" and store.exists(METADATA) and not missing:
        compacted = decode_part(store.get(METADATA), ["item_id"]).num_rows
        if compacted != len(seen):
            problems.append(f"{METADATA}: {compacted} rows, parts hold {len(seen)} items; "
                            "rerun `farm resume` to compact again")  # fmt: skip
    if len(problems) > limit:
        verdict.problems = problems[:limit] + [f"… and {len(problems) - limit} more problems"]
    return verdict


def _check_image(store: Store, row: dict) -> str | None:
    """The row's image, and its friendly copy if it has one, exist with the row's sha256."""
    for key in filter(None, (row["image_key"], row.get("named_key"))):
        if not store.exists(key):
            return f"{key}: missing (item {row['item_id']})"
        digest = hashlib.sha256(store.get(key)).hexdigest()
        if digest != row["image_sha256"]:
            return (f"{key}: sha256 {digest[:12]}… does not match its row "
                    f"({row['image_sha256'][:12]}…)")  # fmt: skip
    return None


def job_status(store: Store) -> dict:
    """Progress of a job: planned, rendered, parts, rate, failures."""
    doc = read_job(store)
    done = completed_items(store)
    planned = doc["plan"]["items"]
    runs = doc.get("runs", [])
    rendered = sum(_count(r.get("rendered")) for r in runs)
    seconds = sum(_count(r["counters"].get("seconds")) for r in runs
                  if isinstance(r.get("counters"), dict))  # fmt: skip
    return {
        "job_id": doc["job_id"],
        "status": doc.get("status"),
        "planned": planned,
        "rendered": len(done),
        "remaining": max(planned - len(done), 0),
        "percent": round(100 * len(done) / planned, 1) if planned else 100.0,
        "parts": sum(1 for k in store.list("parts/") if k.endswith(".parquet")),
        "runs": len(runs),
        "images_per_second": round(rendered / seconds, 3) if seconds else None,
        "failed_items": _count(runs[-1].get("failed_items")) if runs else 0,
        "updated_at": doc.get("updated_at"),
    }


def _count(value: object) -> float:
    """A number from a run record; anything else counts as 0 (status is best effort)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0
