"""Planning and resuming at scale: `farm plan` on sweeps up to 1,000,000 items, and the
scan a resume makes of a job's parts, up to 100,000 rows. Time and peak memory (each in a
process of its own), against a baseline measured in the same run:

- plan: `farm --help` (starting the CLI: Python, click, farm's light modules);
- resume scan: a bare pyarrow read of every part's item_id column.

The resume scan is `open_job` (job.json checked, every part's item_ids read) plus the
unit streams of what is left, drained: what `farm resume` does before it renders.

    python bench/plan_scale.py [--plan 10000 100000 1000000] [--rows 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEAK = ("import atexit, resource, sys; atexit.register(lambda: print('PEAK_KB', "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); ")  # fmt: skip


def measure(code: str, *args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of `code` run in a fresh Python process."""
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", PEAK + code, *args], capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    seconds = time.perf_counter() - t0
    if run.returncode:
        raise SystemExit(run.stdout + run.stderr)
    peak = next(int(line.split()[1]) for line in run.stderr.splitlines()
                if line.startswith("PEAK_KB"))  # fmt: skip
    return seconds, peak / 1024


def sweep_spec(root: Path, items: int) -> Path:
    """100 prompts × (items / 1000) seeds × 10 strengths of one LoRA."""
    seeds = items // 1000
    spec = {"job": f"plan-{items}", "prompts": [f"a red circle, variant {i}" for i in range(100)],
            "seeds": {"start": 0, "count": seeds},
            "loras": [{"name": "neon", "path": "tiny:neon", "alpha": "0.1:1:0.1"}],
            "output": str(root / "out")}  # fmt: skip
    path = root / f"plan-{items}.yaml"
    path.write_text(json.dumps(spec))
    return path


def make_job(root: Path, rows: int) -> Path:
    """A finished job of `rows` rows in parts of 8, as workers write them (no images)."""
    from farm.plan.sweep import expand, make_plan, unit_streams
    from farm.records.parts import encode_rows, part_key
    from farm.run.job import open_job
    from farm.spec import parse_spec
    from farm.storage import open_store

    spec = parse_spec({"job": f"resume-{rows}", "prompts": [f"p{i}" for i in range(100)],
                       "seeds": {"start": 0, "count": rows // 1000},
                       "loras": [{"name": "neon", "path": "tiny:neon", "alpha": "0.1:1:0.1"}],
                       "output": str(root)})  # fmt: skip
    plan = make_plan(spec)
    store = open_store(str(root)).child(spec.job)
    open_job(plan, store, echo=lambda _: None)
    del expand
    for stream in unit_streams(plan):
        for unit in stream.units:
            store.put(part_key(unit.unit_id), encode_rows([
                {"job_id": spec.job, "item_id": i.item_id, "unit_id": unit.unit_id,
                 "prompt": i.prompt, "seed": i.seed, "alpha": i.alpha, "batch_size": 8}
                for i in unit.items]))  # fmt: skip
    return root / spec.job


RESUME = """
import sys
from farm.plan.stored import stored_plan
from farm.records.job_doc import read_job
from farm.run.job import open_job
from farm.storage import open_store
from farm.plan.sweep import unit_streams
store = open_store(sys.argv[1])
plan = stored_plan(store, read_job(store))
doc, done = open_job(plan, store, echo=lambda _: None)
left = sum(len(u.items) for s in unit_streams(plan, done) for u in s.units)
assert len(done) == plan.items and left == 0, (len(done), plan.items, left)
"""
BARE_SCAN = """
import sys, pathlib, pyarrow.parquet as pq
ids = set()
for p in sorted(pathlib.Path(sys.argv[1], "parts").iterdir()):
    ids.update(pq.read_table(p, columns=["item_id"]).column("item_id").to_pylist())
print(len(ids))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = measure("from farm.cli import main; sys.argv = ['farm', '--help']; main()")
        print("| farm plan | wall s | peak MiB | wall / `farm --help` | peak / `farm --help` |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| `farm --help` (baseline) | {base[0]:.2f} | {base[1]:.0f} | 1.00 | 1.00 |")
        for items in args.plan:
            spec = sweep_spec(root, items)
            s, mib = measure("from farm.cli import main; sys.argv = ['farm', 'plan', "
                             f"{str(spec)!r}]; main()")  # fmt: skip
            print(f"| {items:,} items | {s:.2f} | {mib:.0f} | {s / base[0]:.2f} | "
                  f"{mib / base[1]:.2f} |", flush=True)  # fmt: skip
        print("\n| resume scan | make s | wall s | peak MiB | bare pyarrow scan s | "
              "wall / bare | peak MiB, bare |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for rows in args.rows:
            t0 = time.perf_counter()
            job = make_job(root / f"r{rows}", rows)
            made = time.perf_counter() - t0
            s, mib = measure(RESUME, str(job))
            bare, bare_mib = measure(BARE_SCAN, str(job))
            print(f"| {rows:,} rows in {rows // 8:,} parts | {made:.0f} | {s:.2f} | {mib:.0f} "
                  f"| {bare:.2f} | {s / bare:.2f} | {bare_mib:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
