"""`farm report` at scale: time and peak memory on jobs of growing size, in one run.

Each job is planned by farm (job.json, item ids, units) and given synthetic 64×64 images
and real parts, so no rendering is needed: 10 prompts × N seeds × 10 neon strengths. For
each size the report runs in its own process (`farm report`), and the baseline is a bare
pass over the same job in the same run: read every image from the store and decode it
once. Reported: seconds, the ratio to the baseline, and the process's peak RSS. If the
report held images, peak memory would grow with the job; it should stay nearly flat.
With `--workers 1 2`, the report is written once per worker count (series measured on
that many processes), then once more with nothing new: every series' result is kept.

    python bench/report_scale.py [--seeds 25 100] [--workers 1 2] [--keep DIR]

With --keep, a job already made there is used again, so a large one is made once.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STRENGTHS = [0, 0.2, 0.4, 0.6, 0.8, 1, 1.5, 2, 3, 4]
PROMPTS = [f"a {c} {s} on a white background" for c, s in
           zip(["red", "green", "blue", "yellow", "purple"] * 2,
               ["circle", "square", "triangle", "star", "ring"] * 2, strict=True)]  # fmt: skip
PROMPTS = [p if i < 5 else p.replace("white", "gray") for i, p in enumerate(PROMPTS)]


def make_job(root: Path, seeds: int) -> Path:
    """A planned job with an image and a row for every item, as a finished run leaves it."""
    from farm.plan.sweep import expand, group_units, make_plan
    from farm.records.job_doc import write_job
    from farm.records.parts import compact, encode_rows, part_key
    from farm.run.job import open_job
    from farm.spec.parse import parse_spec
    from farm.storage import open_store

    spec = parse_spec({
        "job": f"scale-{seeds}", "model": "tiny", "prompts": PROMPTS,
        "seeds": {"start": 0, "count": seeds},
        "loras": [{"name": "neon", "path": "tiny:neon", "alpha": STRENGTHS}],
        "render": {"steps": 20, "width": 64, "height": 64}, "output": str(root),
    })  # fmt: skip
    plan = make_plan(spec)
    store = open_store(str(root)).child(spec.job)
    doc, _ = open_job(plan, store, echo=lambda _: None)
    neon = plan.adapters["neon"]
    for unit in group_units(expand(plan)):
        rows = []
        for item in unit.items:
            data = _image(item.seed, PROMPTS.index(item.text), item.alpha)
            key = f"images/{item.item_id}.png"
            store.put(key, data)
            rows.append({
                "job_id": spec.job, "item_id": item.item_id, "unit_id": unit.unit_id,
                "prompt": item.prompt, "negative_prompt": "", "seed": item.seed, "rng": "cpu",
                "model": "tiny", "model_hash": doc["model"]["hash"],
                "loras": [{"name": "neon", "sha256": neon.sha256, "shorthash": neon.shorthash,
                           "weight": item.alpha, "te_weight": item.alpha,
                           "unet_weight": item.alpha}],
                "alpha": item.alpha, "steps": 20, "guidance": 7.5, "scheduler": "euler",
                "width": 64, "height": 64, "image_key": key, "file_name": key,
                "format": "png", "image_bytes": len(data),
                "infotext": f"{item.prompt}\nSteps: 20, Seed: {item.seed}",
                "flags": ["overdriven"] if item.alpha >= 4 else [],
            })  # fmt: skip
        store.put(part_key(unit.unit_id), encode_rows(rows))
    compact(store)
    doc.update(status="done")
    write_job(store, doc)
    return root / spec.job


def _image(seed: int, prompt: int, strength: float) -> bytes:
    """A disc on white that darkens and frays as the strength grows: a plausible response."""
    rng = np.random.default_rng(seed * 131 + prompt)
    y, x = np.mgrid[:64, :64]
    cx, cy = rng.integers(20, 44, size=2)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < (10 + prompt) ** 2
    img = np.full((64, 64, 3), 245.0)
    img[disc] = [40 + 20 * prompt, 80, 200]
    img *= 1 - 0.15 * min(strength, 1)
    img += rng.normal(0, 30 * max(0.0, strength - 1), img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def decode_all(job: Path) -> float:
    """The baseline: every image read from the store and decoded once."""
    from farm.report.measure import decode
    from farm.storage import open_store

    store = open_store(str(job))
    start = time.perf_counter()
    for key in store.list("images/"):
        decode(store.get(key))
    return time.perf_counter() - start


def report(job: Path, workers: int | None = None) -> tuple[float, float]:
    """`farm report` in its own process: seconds and the driver's peak RSS in MiB."""
    # VmHWM, not ru_maxrss: a child started by fork and exec inherits its parent's
    # ru_maxrss, which would report this bench's own peak as the report's.
    code = ("import re, sys, time; from farm.cli import main; "
            "t = time.perf_counter()\ntry:\n main(['report', *sys.argv[1:]])\n"
            "except SystemExit: pass\n"
            "print('SECONDS', time.perf_counter() - t); "
            "status = open('/proc/self/status').read()\n"
            "print('RSS', re.search(r'VmHWM:\\s+(\\d+)', status)[1])")  # fmt: skip
    more = ["--workers", str(workers)] if workers else []
    proc = subprocess.run([sys.executable, "-c", code, str(job), *more], capture_output=True,
                          text=True, check=True)  # fmt: skip
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
                 if line.startswith(("SECONDS", "RSS")))  # fmt: skip
    return float(lines["SECONDS"]), int(lines["RSS"]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--workers", type=int, nargs="+", help="Worker counts to compare.")
    parser.add_argument("--keep", type=Path, help="Make the jobs here and keep them.")
    args = parser.parse_args()
    os.environ.setdefault("FARM_HOME", tempfile.mkdtemp(prefix="farm-bench-home-"))
    root = args.keep or Path(tempfile.mkdtemp(prefix="farm-report-scale-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; peak RSS of `farm report` in its own process")  # fmt: skip
    print("| images | make (s) | decode all, baseline (s) | workers | farm report (s) | "
          "ms / image | ratio | peak RSS (MiB) | report files |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for seeds in args.seeds:
        start = time.perf_counter()
        job = root / f"scale-{seeds}"
        if not (args.keep and (job / "job.json").is_file()):
            job = make_job(root, seeds)
        made = time.perf_counter() - start
        base = decode_all(job)
        n = len(PROMPTS) * seeds * len(STRENGTHS)
        runs = [(w, True) for w in args.workers or [None]] + [
            (args.workers[-1], False) if args.workers else (None, False)
        ]
        for workers, fresh in runs:
            if fresh:
                shutil.rmtree(job / "report", ignore_errors=True)
            seconds, rss = report(job, workers)
            files = sum(1 for p in (job / "report").rglob("*") if p.is_file())
            label = (str(workers) if workers else "default") + ("" if fresh else ", all kept")
            print(f"| {n:,} | {made:.0f} | {base:.1f} | {label} | {seconds:.1f} | "
                  f"{1000 * seconds / n:.2f} | {seconds / base:.1f}× | {rss:.0f} | {files:,} |",
                  flush=True)  # fmt: skip
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this bench's own peak RSS {own:.0f} MiB, not the report's)")


if __name__ == "__main__":
    main()
