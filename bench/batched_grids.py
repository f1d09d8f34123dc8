"""Batched strength grids on the tiny model: farm against the bare diffusers loop, and
mixed-strength calls against calls of equal strengths, per batch size (CPU).

Both sides render the same items, `tiny:neon` at 11 strengths (0, 0.1, …, 1) × 4 seeds ×
2 prompts = 88 images, at the demo's settings (128×128, 20 Euler steps, guidance 7.5),
with the same torch thread count, in this process, pipelines loaded and warmed first:

- bare: the loop a user writes: `load_lora_weights` once, then per image `set_adapters`,
  `pipe(...)` with a CPU generator, `image.save(png)`;
- farm: `RenderWorker.render` over the sweep's units, two units in flight as on a Ray
  actor, with everything a job writes (PNG with infotext, sha256, Parquet parts).

Grids: the same 88 items cut into gradient units (one prompt and seed, strengths side by
side), rendered with mixed-strength calls (farm's) or with only equal strengths sharing a
call (`mixed=False`: what farm did before, and what a per-call `set_adapters` allows).

    python bench/batched_grids.py [--rounds 2] [--threads 1] [--batches 2 4 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = ["a red circle on a white background", "a blue star on a gray background"]
STRENGTHS = [round(0.1 * i, 1) for i in range(11)]
SEEDS = [0, 1, 2, 3]


def spec_data(batch: int, size: int, steps: int, name: str) -> dict:
    return {
        "job": name, "prompts": PROMPTS, "seeds": SEEDS,
        "loras": [{"name": "neon", "path": "tiny:neon", "alpha": STRENGTHS}],
        "render": {"steps": steps, "guidance": 7.5, "width": size, "height": size,
                   "batch": batch},
    }  # fmt: skip


def bare_loop(pipe, items, size: int, steps: int, out: Path) -> float:
    import torch

    start = time.perf_counter()
    for i, item in enumerate(items):
        weight = item.loras[0][1].unet if item.loras else 0.0
        pipe.set_adapters(["neon"], [weight])
        image = pipe(
            item.text,
            num_inference_steps=steps,
            guidance_scale=7.5,
            width=size,
            height=size,
            generator=torch.Generator("cpu").manual_seed(item.seed),
        ).images[0]
        image.save(out / f"{i}.png")
    return time.perf_counter() - start


def farm_run(worker, units, ctx) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:  # two units in flight, as the executor keeps
        reports = list(pool.map(lambda u: worker.render(u, ctx), units))
    assert sum(r.images for r in reports) == sum(len(u.items) for u in units)
    return time.perf_counter() - start


def main() -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from farm.loras.demo import demo_lora_path
    from farm.plan.sweep import expand, group_units, make_plan
    from farm.render.pipelines import quiet_libraries
    from farm.render.tiny import ensure_tiny
    from farm.run.job import job_context
    from farm.spec import parse_spec
    from farm.storage.store import LocalStore
    from farm.worker.render_worker import RenderWorker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    tiny = ensure_tiny()
    pipe = StableDiffusionPipeline.from_pretrained(tiny)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(demo_lora_path("tiny:neon")), adapter_name="neon")
    worker = {m: RenderWorker("cpu", args.threads, mixed=m) for m in (True, False)}
    worker["serial io"] = RenderWorker("cpu", args.threads, pipelined=False)
    results: dict[str, list[float]] = {}

    def plan_for(batch: int, name: str):
        plan = make_plan(parse_spec(spec_data(batch, args.size, args.steps, name)))
        return plan, list(expand(plan))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, items = plan_for(1, "items")
        for w in (worker[True], worker[False], worker["serial io"]):  # load and warm up
            plan, warm = plan_for(1, "warm")
            store = LocalStore(root / f"warm-{id(w)}")
            w.render(next(group_units(warm[:1])), job_context(plan, store))
        pipe(PROMPTS[0], num_inference_steps=2, width=args.size, height=args.size)
        for r in range(args.rounds):
            out = root / f"bare-{r}"
            out.mkdir()
            results.setdefault("bare", []).append(
                len(items) / bare_loop(pipe, items, args.size, args.steps, out)
            )

            def farm(label: str, batch: int, w, gradient: bool, r: int = r) -> None:
                plan, its = plan_for(batch, f"b{batch}")
                if gradient:  # each unit a gradient: one prompt and seed, every strength
                    its = sorted(its, key=lambda i: (i.text, i.seed))
                store = LocalStore(root / f"{label}-{r}".replace(" ", "_"))
                units = list(group_units(its, plan.unit_size))
                seconds = farm_run(w, units, job_context(plan, store))
                results.setdefault(label, []).append(len(its) / seconds)

            farm("farm, batch 1", 1, worker[True], False)
            for b in args.batches:
                farm(f"farm, batch {b}", b, worker[True], False)
                farm(f"grid, mixed, batch {b}", b, worker[True], True)
                farm(f"grid, equal only, batch {b}", b, worker[False], True)
            farm("farm, batch 4, I/O on the render thread", 4, worker["serial io"], False)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in results.items()),
                  flush=True)  # fmt: skip
    bare = statistics.median(results["bare"])
    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), {args.size}², "
          f"{args.steps} steps, {len(items)} images, median of {args.rounds} rounds\n")  # fmt: skip
    print("| variant | images/s | / bare loop |")
    print("| --- | --- | --- |")
    for label, values in results.items():
        median = statistics.median(values)
        print(f"| {label} | {median:.2f} | {median / bare:.2f} |")


if __name__ == "__main__":
    main()
