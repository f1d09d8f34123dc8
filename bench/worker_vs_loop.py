"""farm against the plain diffusers loop a careful user writes, on this machine's CPU.

The sweep is `tiny:neon` over 2 prompts × S seeds (`--seeds`, default 8) in three kinds:

- mixed: 11 strengths (0, 0.1, …, 1), the strength sheet farm exists for;
- equal: every item at strength 0.6 (11 × S seeds per prompt, the same image count);
- none: no LoRA at all (the same prompts and seeds as equal).

Each side runs in a process of its own, one after the other, alternating over rounds:

- loop, batched: the loop a careful user writes. `load_lora_weights` once; per strength
  `set_adapters` once, then one `pipe([...], generator=[...])` call for each 8 of that
  strength's prompt × seed cells (as many as one strength has); `image.save(png)`.
  Torch at its default thread count (the machine's cores).
- loop, batch 1: the same, one image per call (BENCHMARKS.md's earlier baseline).
- farm, N workers: `farm run` on a private local Ray, everything a job writes (PNG with
  infotext, sha256, parts, metadata.parquet); `--workers 0` runs farm's own layout
  (on a CPU, a single-threaded worker per core while memory holds the model).

Steady state on both sides: the loops time everything after one warm-up call; farm's rate
is read from its rows, from the end of each worker's first pipeline call to the last
row (worker start-up and the model load are not counted, as the loop's are not).

    python bench/worker_vs_loop.py [--rounds 2] [--sizes 64x4 128x20] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a red circle on a white background", "a blue star on a gray background"]
STRENGTHS = [round(0.1 * i, 1) for i in range(11)]
EQUAL = 0.6
CELLS_PER_CALL = 8


def items(kind: str, seeds: int) -> list[tuple[str, int, float | None]]:
    """(prompt, seed, strength) of the sweep, strength-major as the loop renders them."""
    if kind == "mixed":
        return [(p, s, w) for w in STRENGTHS for p in PROMPTS for s in range(seeds)]
    count = len(STRENGTHS) * seeds
    return [(p, s, EQUAL if kind == "equal" else None) for p in PROMPTS for s in range(count)]


def loop(args: argparse.Namespace) -> None:
    """The plain loop, in this process: prints its steady images/s as JSON."""
    import torch
    from diffusers import StableDiffusionPipeline

    from farm.loras.demo import demo_lora_path
    from farm.render.pipelines import quiet_libraries
    from farm.render.tiny import ensure_tiny

    quiet_libraries()
    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny())
    pipe.set_progress_bar_config(disable=True)
    if args.kind != "none":
        pipe.load_lora_weights(str(demo_lora_path("tiny:neon")), adapter_name="neon")
    todo = items(args.kind, args.seeds)
    per_call = args.batch

    def call(cells: list) -> list:
        return pipe(
            [p for p, _, _ in cells], num_inference_steps=args.steps, guidance_scale=7.5,
            width=args.size, height=args.size,
            generator=[torch.Generator("cpu").manual_seed(s) for _, s, _ in cells],
        ).images  # fmt: skip

    call(todo[:per_call])  # warm-up, not timed
    out = Path(args.out)
    start = time.perf_counter()
    n = 0
    for strength in dict.fromkeys(w for _, _, w in todo):  # set_adapters once a strength
        if strength is not None:
            pipe.set_adapters(["neon"], [strength])
        cells = [c for c in todo if c[2] == strength]
        for i in range(0, len(cells), per_call):
            for image in call(cells[i : i + per_call]):
                image.save(out / f"{n}.png")
                n += 1
    seconds = time.perf_counter() - start
    print(json.dumps({"images": n, "rate": n / seconds, "threads": torch.get_num_threads()}))


def farm_spec(kind: str, args: argparse.Namespace, out: Path) -> Path:
    seeds = args.seeds if kind == "mixed" else len(STRENGTHS) * args.seeds
    spec = {
        "job": f"{kind}-{args.size}", "model": "tiny", "prompts": PROMPTS,
        "seeds": {"start": 0, "count": seeds},
        "render": {"steps": args.steps, "guidance": 7.5, "width": args.size,
                   "height": args.size, "scheduler": "euler"},
        "output": str(out),
    }  # fmt: skip
    if kind != "none":
        alpha = STRENGTHS if kind == "mixed" else [EQUAL]
        spec["loras"] = [{"name": "neon", "path": "tiny:neon", "alpha": alpha}]
    path = out / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def farm_rate(job: Path) -> tuple[int, float, set, int]:
    """Steady images/s from a finished job's rows: after every worker's first call."""
    import pyarrow.parquet as pq

    rows = pq.read_table(job / "metadata.parquet").to_pylist()
    calls: dict[tuple, list] = {}
    for r in rows:
        calls.setdefault(tuple(r["batch_items"]), []).append(r)
    ends = sorted((max(x["created_at"] for x in c), c[0]["worker"], len(c)) for c in calls.values())
    first: dict[str, object] = {}
    for end, worker, _ in ends:
        first.setdefault(worker, end)
    start = max(first.values())
    after = sum(n for end, _, n in ends if end > start)
    seconds = (ends[-1][0] - start).total_seconds()
    return len(rows), after / seconds, {r["threads"] for r in rows}, len(first)


def run_farm(kind: str, workers: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
        out = Path(tmp)
        spec = farm_spec(kind, args, out)
        cmd = [sys.executable, "-m", "farm", "run", str(spec)]
        cmd += ["--workers", str(workers)] if workers else []  # 0: farm's own layout
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"farm run failed:\n{proc.stdout}\n{proc.stderr}")
        images, rate, threads, workers_seen = farm_rate(out / f"{kind}-{args.size}")
        return {"images": images, "rate": rate, "threads": sorted(threads),
                "workers": workers_seen}  # fmt: skip


def run_loop(kind: str, batch: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="loop-bench-") as tmp:
        cmd = [sys.executable, __file__, "--loop", kind, "--batch", str(batch),
               "--size", str(args.size), "--steps", str(args.steps), "--seeds",
               str(args.seeds), "--out", tmp]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"loop failed:\n{proc.stdout}\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["64x4", "128x20"],
                        help="SIZExSTEPS settings")  # fmt: skip
    parser.add_argument("--kinds", nargs="+", default=["mixed", "equal", "none"])
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2],
                        help="0: farm's own layout")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--batch1", action="store_true", help="also the batch-1 loop")
    # The loop's own process:
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=CELLS_PER_CALL, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        args.kind = args.loop
        loop(args)
        return
    results: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        for setting in args.sizes:
            args.size, args.steps = (int(v) for v in setting.split("x"))
            for kind in args.kinds:
                variants = [("loop, batched", lambda k=kind: run_loop(k, CELLS_PER_CALL, args))]
                if args.batch1:
                    variants.append(("loop, batch 1", lambda k=kind: run_loop(k, 1, args)))
                for w in args.workers:
                    label = f"farm, {w} worker{'s' if w > 1 else ''}" if w else "farm, default"
                    variants.append((label, lambda k=kind, w=w: run_farm(k, w, args)))
                for label, run in variants:
                    got = run()
                    results.setdefault((setting, kind, label), []).append(got["rate"])
                    print(f"round {r} {setting} {kind} {label}: {got['rate']:.2f} img/s "
                          f"({got['images']} images, {got.get('workers', 1)} workers, "
                          f"threads {got['threads']})",
                          flush=True)  # fmt: skip
    import torch

    print(f"\n{os.cpu_count()} CPUs, torch {torch.__version__}, {args.seeds * 22} images a "
          f"sweep, median of {args.rounds} rounds (in brackets: each round against its own "
          "loop)\n")  # fmt: skip
    print("| setting | sweep | run | images/s | / loop, batched |")
    print("| --- | --- | --- | --- | --- |")
    for (setting, kind, label), rates in results.items():
        bases = results[(setting, kind, "loop, batched")]
        base, median = statistics.median(bases), statistics.median(rates)
        each = ", ".join(f"{v / b:.2f}" for v, b in zip(rates, bases, strict=True))
        size, steps = setting.split("x")
        print(f"| {size}², {steps} steps | {kind} | {label} | {median:.2f} | "
              f"{median / base:.2f} ({each}) |")  # fmt: skip


if __name__ == "__main__":
    main()
