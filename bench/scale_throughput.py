"""Scheduling and scaling: the farm on a local Ray with fake GPUs vs the bare diffusers loop.

Two measurements on the embedded `tiny` model, in one run, on one local Ray started with
`num_gpus=4` (fake GPUs: each worker asks for 1 GPU and 1 CPU, finds no CUDA and renders
on the CPU with 1 torch thread):

1. Scheduling overhead per unit. A very cheap render (64x64, 2 steps; --overhead-*) over
   many units of 8 items, rendered by `run_job` with 1 worker and by the bare loop with
   1 torch thread (the worker's share). Reported two ways:
   - total: (farm wall - bare) / units, where the farm wall includes plan, job.json,
     worker start-up (process, imports, pipeline and LoRA load), rendering, PNG
     encoding and writes, Parquet parts and compaction;
   - steady: the farm's time per unit between its first and last finished unit (so
     start-up is excluded) minus the bare loop's time per unit.
2. Throughput (images/s) of a sweep (`tiny:neon` over 0:1:0.2, 2 prompts, --seeds,
   --size, --steps) with 1, 2 and 4 workers, against the bare loop with 1 torch thread
   (--bare-threads; ratios are against the first listed). The bare loop is
   AutoPipelineForText2Image.from_pretrained + load_lora_weights, then per image
   set_adapters and one pipeline call with a CPU generator seeded per item. It keeps
   the images in memory (no encoding, no writes); its pipeline is loaded before timing.
   torch's default thread count (one per core) is the hand-written script's default, but
   on a shared 2-core machine it collapses whenever another process takes a core (each
   of the thousands of small ops waits for a descheduled thread), so it is opt-in:
   `--bare-threads 1 0`. Each farm row also gives the time until every worker was up
   (the first dispatch), until the first unit finished, and a steady rate that leaves
   out the first N finished units (N = workers) and the time before them.

Unit completion times come from the executor's Progress (patched for the run). The
default run renders about 3,100 images: 16 minutes on a shared 2-core VM with a load
average of 3 to 5 from other work, less on an idle one.

Variants alternate within each round (the order flips every other round), so machine
noise hits them alike; the tables show medians over rounds, and each ratio is the
median of the per-round ratios against the bare loop of the same round.

    python bench/scale_throughput.py [--rounds 3] [--size 128] [--steps 10] [--seeds 8]
                                     [--workers 1 2 4] [--bare-threads 1] [--overhead-units 40]
                                     [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

PROMPTS = ["cyberpunk cityscape with neon lights", "portrait of a knight in a castle, oil painting"]
NEGATIVE = "low quality, blurry"
SWEEP_ALPHA = "0:1:0.2"  # 6 strengths
# 2 prompts x 4 strengths = 8 items per seed: one seed per unit of 8.
OVERHEAD_ALPHAS = [0.0, 0.25, 0.5, 1.0]


def make_spec(job: str, output: str, seeds: int, size: int, steps: int, alpha):
    from farm.spec import parse_spec

    return parse_spec({
        "job": job, "model": "tiny", "prompts": PROMPTS, "negative_prompt": NEGATIVE,
        "seeds": {"start": 0, "count": seeds},
        "loras": [{"name": "neon", "path": "tiny:neon", "alpha": alpha}],
        "render": {"steps": steps, "guidance": 7.5, "width": size, "height": size,
                   "scheduler": "euler"},
        "output": output,
    })  # fmt: skip


class BareLoop:
    """What a user would hand-write with diffusers, loaded once before anything is timed."""

    def __init__(self, model: Path, lora: Path):
        import torch
        from diffusers import AutoPipelineForText2Image

        self.torch = torch
        self.pipe = AutoPipelineForText2Image.from_pretrained(model, use_safetensors=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.load_lora_weights(str(lora), adapter_name="neon", use_safetensors=True)

    def run(self, spec, threads: int) -> tuple[float, int]:
        """Render the spec's items (the farm's own expansion) one call each; (seconds, n)."""
        from farm.plan.sweep import expand, make_plan

        torch = self.torch
        torch.set_num_threads(threads)
        r = spec.render
        items = list(expand(make_plan(spec)))
        # Warm-up at this size: first-call allocations are not what is measured.
        self.pipe(PROMPTS[0], num_inference_steps=1, width=r.width, height=r.height)
        start = time.perf_counter()
        for item in items:
            self.pipe.set_adapters(["neon"], [item.alpha])  # the one swept LoRA
            self.pipe(
                prompt=item.text,
                negative_prompt=item.negative_prompt or None,
                num_inference_steps=r.steps,
                guidance_scale=r.guidance,
                width=r.width,
                height=r.height,
                generator=torch.Generator("cpu").manual_seed(item.seed),
            )
        return time.perf_counter() - start, len(items)


def run_farm(spec, workers: int) -> dict:
    """run_job with `workers` fake-GPU workers; times of each finished unit recorded."""
    import farm.run.executor
    from farm.run.job import run_job
    from farm.run.progress import Progress

    done: list[tuple[float, int]] = []  # (perf_counter, images) per finished unit
    begun: list[float] = []  # when the first unit was dispatched: every worker is up

    class Recorder(Progress):
        def begin(self) -> None:
            if not begun:
                begun.append(time.perf_counter())
            parent = getattr(super(), "begin", None)
            if parent:
                parent()

        def update(self, images: int) -> None:
            done.append((time.perf_counter(), images))
            super().update(images)

    load = os.getloadavg()[0]
    start = time.perf_counter()
    with mock.patch.object(farm.run.executor, "Progress", Recorder):
        result = run_job(spec, workers=workers, gpus_per_worker=1, echo=lambda *_: None)
    wall = time.perf_counter() - start
    assert result.ok and result.rendered == result.planned, result
    assert result.counters["workers"] == workers, result.counters
    # Steady state: skip each worker's first unit (start-up, pipeline and LoRA load).
    skip = min(workers, len(done) - 1)
    t_skip, t_last = done[skip - 1][0] if skip else start, done[-1][0]
    steady_images = sum(n for _, n in done[skip:])
    return {
        "images": result.rendered,
        "units": len(done),
        "wall_s": wall,
        "executor_s": result.seconds,
        "workers_ready_s": begun[0] - start if begun else None,
        "first_unit_s": done[0][0] - start,
        "last_unit_s": t_last - start,
        "steady_s_per_unit": (t_last - t_skip) / max(1, len(done) - skip),
        "steady_images_per_s": steady_images / (t_last - t_skip),
        "images_per_s": result.rendered / wall,
        "loadavg_1m": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="sweep width and height")
    parser.add_argument("--steps", type=int, default=10, help="sweep denoising steps")
    parser.add_argument("--seeds", type=int, default=8, help="seeds per prompt in the sweep")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--bare-threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch threads of the bare loop variants; 0 = torch's default",
    )
    parser.add_argument("--overhead-units", type=int, default=40, help="0 skips part 1")
    parser.add_argument("--overhead-size", type=int, default=64)
    parser.add_argument("--overhead-steps", type=int, default=2)
    parser.add_argument("--json-out", help="write every measurement here as JSON")
    args = parser.parse_args()

    os.environ.setdefault("FARM_HOME", tempfile.mkdtemp(prefix="farm-bench-"))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if not os.environ.get("RAY_AUTH_MODE"):
        # As farm's start_ray does: a private token in the environment, which the Ray
        # workers inherit, so no token file shared with other local Rays (~/.ray) can
        # lock out the workers that start later.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray
    import torch

    from farm.loras.demo import demo_lora_path
    from farm.render.pipelines import quiet_libraries
    from farm.render.tiny import ensure_tiny

    quiet_libraries()
    default_threads = torch.get_num_threads()
    args.bare_threads = [t or default_threads for t in args.bare_threads]
    bare = BareLoop(ensure_tiny(), demo_lora_path("tiny:neon"))
    # A private local Ray with 4 fake GPUs and a CPU slot for each worker; the executor's
    # start_ray finds it initialized and uses it.
    ray.init(address="local", num_gpus=4, num_cpus=max(4, os.cpu_count() or 1),
             include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"FARM_HOME": os.environ["FARM_HOME"]}})  # fmt: skip
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="farm-bench-out-") as out:
        # Warm-up: Ray's first workers and the OS file cache, not timed.
        run_farm(make_spec("warmup", out, 1, 64, 1, [0.0]), workers=1)
        for n in range(args.rounds):
            variants = [("bare", t) for t in args.bare_threads]
            variants += [("farm", w) for w in args.workers]
            if n % 2:
                variants.reverse()
            if args.overhead_units:
                spec = make_spec(f"r{n}-overhead", out, args.overhead_units, args.overhead_size,
                                 args.overhead_steps, OVERHEAD_ALPHAS)  # fmt: skip
                for kind in ("bare", "farm") if n % 2 == 0 else ("farm", "bare"):
                    runs.append(measure("overhead", kind, 1, spec, bare, n))
            for kind, count in variants:
                spec = make_spec(f"r{n}-{kind}{count}", out, args.seeds, args.size,
                                 args.steps, SWEEP_ALPHA)  # fmt: skip
                runs.append(measure("sweep", kind, count, spec, bare, n))
    ray.shutdown()
    info = machine(default_threads)
    report(runs, args, info)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"machine": info, "args": vars(args), "runs": runs}, indent=2)
        )


def measure(part: str, kind: str, n: int, spec, bare: BareLoop, round_: int) -> dict:
    """One timed run: the bare loop with n torch threads, or the farm with n workers."""
    if kind == "bare":
        threads = n
        load = os.getloadavg()[0]
        seconds, images = bare.run(spec, threads)
        row = {"images": images, "units": -(-images // 8), "wall_s": seconds,
               "images_per_s": images / seconds, "steady_images_per_s": images / seconds,
               "steady_s_per_unit": seconds / -(-images // 8), "threads": threads,
               "loadavg_1m": load}  # fmt: skip
    else:
        row = run_farm(spec, workers=n) | {"workers": n}
    row |= {"part": part, "kind": kind, "round": round_}
    label = f"bare ({row['threads']} threads)" if kind == "bare" else f"farm {n} workers"
    print(f"round {round_} {part:>8} {label:>19}: {row['images']} images in "
          f"{row['wall_s']:.1f}s = {row['images_per_s']:.2f} images/s "
          f"(load {row['loadavg_1m']:.1f})", flush=True)  # fmt: skip
    return row


def machine(threads: int) -> dict:
    from importlib.metadata import version

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "cores": os.cpu_count(), "cpu": cpu,
            "python": platform.python_version(), "torch": version("torch"),
            "ray": version("ray"), "diffusers": version("diffusers"),
            "torch_default_threads": threads}  # fmt: skip


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def med_s(rows: list[dict], key: str, digits: int = 1) -> str:
    """Median seconds, or n/a when the executor did not report the moment."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return f"{statistics.median(values):.{digits}f}" if values else "n/a"


def ratios(farm: list[dict], bare: list[dict], key: str) -> float:
    """Median over rounds of farm/bare, each against the bare loop of its own round."""
    base = {r["round"]: r[key] for r in bare}
    return statistics.median(r[key] / base[r["round"]] for r in farm)


def report(runs: list[dict], args, info: dict) -> None:
    print(f"\nmachine: {info['machine']}, {info['cores']} cores ({info['cpu']}), "
          f"python {info['python']}, torch {info['torch']}, ray {info['ray']}; "
          f"rounds: {args.rounds}")  # fmt: skip

    def pick(part: str, kind: str, n: int | None = None) -> list[dict]:
        key = "threads" if kind == "bare" else "workers"
        return [r for r in runs if r["part"] == part and r["kind"] == kind
                and (n is None or r[key] == n)]  # fmt: skip

    bare, farm = pick("overhead", "bare"), pick("overhead", "farm")
    if bare:
        units = bare[0]["units"]
        total = [(f["wall_s"] - b["wall_s"]) / units for f, b in zip(farm, bare, strict=True)]
        steady = [f["steady_s_per_unit"] - b["steady_s_per_unit"]
                  for f, b in zip(farm, bare, strict=True)]  # fmt: skip
        bare_unit = med(bare, "steady_s_per_unit")
        print(f"\n### Scheduling overhead: {units} units x 8 items, {args.overhead_size}x"
              f"{args.overhead_size}, {args.overhead_steps} steps, 1 worker vs bare loop "
              "(1 thread)\n")  # fmt: skip
        print("| measure | median | per unit | time / bare |")
        print("| --- | --- | --- | --- |")
        print(f"| bare loop, 1 thread | {med(bare, 'wall_s'):.2f} s | "
              f"{1000 * bare_unit:.0f} ms | 1.00 |")  # fmt: skip
        print(f"| farm, 1 worker: run_job wall | {med(farm, 'wall_s'):.2f} s | "
              f"{1000 * med(farm, 'wall_s') / units:.0f} ms | "
              f"{ratios(farm, bare, 'wall_s'):.2f} |")  # fmt: skip
        print(f"| farm: until every worker was up | {med_s(farm, 'workers_ready_s', 2)} s | | |")
        print(f"| farm: until the first unit finished | {med_s(farm, 'first_unit_s', 2)} s | | |")
        print(f"| farm: steady state (after the first unit) | | "
              f"{1000 * med(farm, 'steady_s_per_unit'):.0f} ms | "
              f"{ratios(farm, bare, 'steady_s_per_unit'):.2f} |")  # fmt: skip
        total_ms = 1000 * statistics.median(total)
        print(f"| overhead, total (incl. start-up) | | {total_ms:.0f} ms | |")
        print(f"| overhead, steady state | | {1000 * statistics.median(steady):.0f} ms | |")
    if not pick("sweep", "bare"):
        return
    bare = pick("sweep", "bare", args.bare_threads[0])
    b = bare[0]
    print(f"\n### Throughput: {b['images']} images ({b['units']} units), {args.size}x{args.size}, "
          f"{args.steps} steps\n")  # fmt: skip
    print("| variant | wall s | images/s | workers up s | first unit s | steady images/s "
          "| / bare (wall) | / bare (steady) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    variants = [("bare", t, f"bare loop, {t} torch thread{'s' * (t > 1)}")
                for t in args.bare_threads]  # fmt: skip
    variants += [("farm", w, f"farm, {w} worker{'s' * (w > 1)}") for w in args.workers]
    for kind, count, label in variants:
        rows = pick("sweep", kind, count)
        up = med_s(rows, "workers_ready_s") if kind == "farm" else ""
        first = med_s(rows, "first_unit_s") if kind == "farm" else ""
        print(f"| {label} | "
              f"{med(rows, 'wall_s'):.1f} | {med(rows, 'images_per_s'):.2f} | {up} | "
              f"{first} | {med(rows, 'steady_images_per_s'):.2f} | "
              f"{ratios(rows, bare, 'images_per_s'):.2f} | "
              f"{ratios(rows, bare, 'steady_images_per_s'):.2f} |")  # fmt: skip
    loads = [r["loadavg_1m"] for r in runs]
    print(f"\n1-minute load average at the start of each run: {min(loads):.1f} to {max(loads):.1f}")


if __name__ == "__main__":
    main()
