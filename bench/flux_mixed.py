"""Mixed-strength calls against calls of equal strengths on the tiny Flux.1-dev pipeline
(CPU): seconds per image, and where they go.

On a transformer model farm gives each sample of one pipeline call its own LoRA strength
(a per-sample scale table, read by a hook on every LoRA layer), so a strength gradient
renders in calls as large as calls of one strength. This measures what the table costs:
the same items rendered in calls of the same size, with the same thread count and
settings, three ways:

- equal: calls whose items share one strength (`AdapterSet.activate`, which is
  diffusers' `set_adapters`), with no per-sample hooks installed: the strength-major grid
  a plain diffusers loop renders;
- equal, idle hooks: the same calls with the hooks installed but off, as a worker's
  equal-strength calls run once it has made a mixed one;
- mixed: calls whose items each have their own strength (`AdapterSet.activate_per_sample`):
  one seed's gradient in a call.

The items are 6 strengths (0, 0.2, …, 1) × `--seeds` seeds (default: the call size) of a
random PEFT LoRA on the transformer (attention, feed-forward and modulation projections
of both streams and of the single blocks: 40 layers) and on the CLIP text encoder's
attention (8), loaded as a worker loads it (PipelineCache, AdapterSet.ensure). Each call
is made as the worker makes it: one prompt list, flow-matching Euler, guidance 3.5 as
Flux.1-dev's embedding, a CPU generator per item, `output_type="np"` and a step-end
callback. The pipeline is loaded and every way warmed first; then each round renders
every item each way, the order rotating from round to round so that load drift on a
shared machine cancels. Each way is timed on the wall clock and in CPU time of the
rendering thread: with one torch thread all of a call's compute runs on it, and CPU time
does not count the time other processes hold the core. Forward hooks on whole
components split each image's wall time into the text encoders (CLIP and T5, once per
call), the transformer (once per step) and the VAE decoder; they run a few times per
call, against 40 LoRA-layer hooks per step. The ratio equal / mixed is taken per round,
then the median: at least 1 means a mixed-strength call is at least as fast per image as
calls of equal strengths. Every way's image of each item is compared with the mixed
call's, as a check that they render the same picture.

    python bench/flux_mixed.py [--rounds 6] [--threads 1] [--size 128] [--steps 4] \
        [--batch 6] [--seeds 6]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on a white background"
STRENGTHS = [round(0.2 * i, 1) for i in range(6)]
STAGES = ("text encoders", "transformer", "VAE decode")


class StageTimer:
    """Seconds per stage from forward hooks on whole components (a few calls per
    pipeline call); `other` is what the call spends outside them."""

    def __init__(self, pipe):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._handles = []
        for stage, module in (("text encoders", pipe.text_encoder),
                              ("text encoders", pipe.text_encoder_2),
                              ("transformer", pipe.transformer),
                              ("VAE decode", pipe.vae.decoder)):  # fmt: skip
            starts: list[float] = []

            def before(*_, starts=starts):
                starts.append(time.perf_counter())

            def after(*_, starts=starts, stage=stage):
                self.seconds[stage] += time.perf_counter() - starts.pop()

            self._handles += [module.register_forward_pre_hook(before),
                              module.register_forward_hook(after)]  # fmt: skip

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)


def make_lora(folder: Path, out: Path):
    """A random PEFT LoRA for the model at `folder`, as farm's Adapter."""
    sys.path.insert(0, str(REPO / "tests"))
    from family_loras import random_lora, save

    from farm.plan.items import Adapter

    path = save(random_lora(folder, ("text_encoder",)), out / "flux-random.safetensors")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Adapter(name="x", path=str(path), sha256=digest, shorthash=digest[:10])


def calls(seeds: list[int], batch: int, mixed: bool) -> list[list[tuple[float, int]]]:
    """The items (strength, seed) cut into calls of `batch`: strength-major for equal
    calls (each call one strength), seed-major for mixed ones (a gradient per call)."""
    if mixed:
        items = [(w, s) for s in seeds for w in STRENGTHS]
    else:
        items = [(w, s) for w in STRENGTHS for s in seeds]
    return [items[i : i + batch] for i in range(0, len(items), batch)]


def render(loaded, adapter, call: list[tuple[float, int]], mixed: bool, args) -> list:
    """One pipeline call as the render worker makes it (RenderWorker._strengths, _call)."""
    import torch

    from farm.spec.strength import Strength

    adapters = loaded.adapters
    if mixed:
        on_step = adapters.activate_per_sample([[(adapter, Strength.plain(w))] for w, _ in call],
                                               args.steps)  # fmt: skip
    else:
        assert len({w for w, _ in call}) == 1, "an equal call shares one strength"
        on_step = adapters.activate([(adapter, Strength.plain(call[0][0]))], args.steps)
    last: dict = {}

    def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        last["latents"] = tensors["latents"]
        return on_step(pipe, step, timestep, tensors) if on_step else tensors

    generators = [torch.Generator("cpu").manual_seed(s) for _, s in call]
    out = loaded.pipe(
        prompt=[PROMPT] * len(call),
        num_inference_steps=args.steps,
        **loaded.family.pipeline_kwargs(3.5, None),
        width=args.size,
        height=args.size,
        generator=generators if len(generators) > 1 else generators[0],
        output_type="np",
        callback_on_step_end=on_step_end,
    )
    return list(out.images)


WAYS = ("equal", "equal, idle hooks", "mixed")


def prepare(adapters, way: str) -> None:
    """The per-sample hooks' state before a way's calls: none at all for `equal` (plain
    diffusers, or a worker that has not mixed yet), installed and idle for `equal, idle
    hooks` (a worker's equal call after a mixed one), installed by the call for `mixed`."""
    if adapters.per_sample is None:
        return
    if way == "equal":
        adapters.per_sample.remove()
    elif way == "equal, idle hooks":
        adapters.per_sample.install(adapters._lora_layers())
        adapters.per_sample.active = False


def run(loaded, adapter, seeds, way: str, args, timer: StageTimer):
    """Every item rendered one way: (wall seconds, CPU seconds of this thread,
    {(strength, seed): image}, stage seconds)."""
    mixed = way == "mixed"
    prepare(loaded.adapters, way)
    images = {}
    timer.reset()
    cpu, start = time.thread_time(), time.perf_counter()
    for call in calls(seeds, args.batch, mixed):
        images.update(zip(call, render(loaded, adapter, call, mixed, args), strict=True))
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
    return wall, cpu, images, dict(timer.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, every way (CPU time counts the rendering thread "
                             "alone: above 1, read the wall time)")  # fmt: skip
    parser.add_argument("--size", type=int, default=128, help="image width and height")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=6, help="items per pipeline call")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per strength, a multiple of --batch (default: --batch)",
    )
    args = parser.parse_args()
    seeds = list(range(args.seeds or args.batch))
    if len(seeds) % args.batch:
        parser.error("--seeds must be a multiple of --batch: equal calls share one strength")

    import numpy as np
    import torch

    from farm.render.pipelines import PipelineCache, pick_device, quiet_libraries
    from farm.render.tiny_pipelines import ensure

    torch.set_num_threads(args.threads)
    quiet_libraries()
    folder = ensure("flux-dev")
    loaded = PipelineCache(pick_device("cpu")).get(str(folder))
    loaded.use_scheduler("flow_euler")
    n = len(STRENGTHS) * len(seeds)
    wall: dict[str, list[float]] = {w: [] for w in WAYS}
    cpu: dict[str, list[float]] = {w: [] for w in WAYS}
    stages: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_lora(folder, Path(tmp))
        loaded.adapters.ensure([adapter])
        timer = StageTimer(loaded.pipe)
        for way in ("mixed", *WAYS):  # warm-up: hooks installed, views made, caches filled
            prepare(loaded.adapters, way)
            render(loaded, adapter, calls(seeds, args.batch, way == "mixed")[0],
                   way == "mixed", args)  # fmt: skip
        print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}; {args.size}², {args.steps} steps, calls of "
              f"{args.batch}, {n} images a way", flush=True)  # fmt: skip
        for r in range(args.rounds):
            # Each way takes each place in the order equally often over len(WAYS) rounds.
            order = WAYS[r % len(WAYS) :] + WAYS[: r % len(WAYS)]
            got = {}
            for way in order:
                seconds, cpu_seconds, got[way], split = run(loaded, adapter, seeds, way, args,
                                                            timer)  # fmt: skip
                wall[way].append(seconds / n)
                cpu[way].append(cpu_seconds / n)
                stages[way].append({k: v / n for k, v in split.items()})
            worst = max(worst, *(float(np.abs(got[way][k] - got["mixed"][k]).max())
                                 for way in WAYS for k in got[way]))  # fmt: skip
            print(f"round {r}, load {os.getloadavg()[0]:.1f}: " + "; ".join(
                f"{way} {wall[way][-1]:.4f} s/image ({cpu[way][-1]:.4f} CPU)" for way in order),
                flush=True)  # fmt: skip

    def ratios(times: dict[str, list[float]], way: str) -> list[float]:
        return [a / b for a, b in zip(times[way], times["mixed"], strict=True)]

    print(f"\nmedians of {args.rounds} rounds, seconds per image; the stages are wall time "
          f"(load {os.getloadavg()[0]:.1f} at the end)\n")  # fmt: skip
    print("| way | wall | CPU | " + " | ".join(STAGES) + " | other | wall, each round |")
    print("| --- | --- | --- | " + "--- | " * len(STAGES) + "--- | --- |")
    for way in WAYS:
        split = {k: statistics.median(s[k] for s in stages[way]) for k in STAGES}
        other = statistics.median(t - sum(s.values()) for t, s in zip(wall[way], stages[way],
                                                                        strict=True))  # fmt: skip
        print(f"| {way} | {statistics.median(wall[way]):.4f} | "
              f"{statistics.median(cpu[way]):.4f} | "
              + " | ".join(f"{split[k]:.4f}" for k in STAGES)
              + f" | {other:.4f} | " + ", ".join(f"{v:.4f}" for v in wall[way]) + " |")  # fmt: skip
    print("\nper-round ratios against mixed (at least 1: mixed at least as fast per image):")
    for way in WAYS[:-1]:
        for name, times in (("wall", wall), ("CPU", cpu)):
            each = ratios(times, way)
            of_medians = statistics.median(times[way]) / statistics.median(times["mixed"])
            rounds = ", ".join(f"{x:.3f}" for x in each)
            print(f"  {way} / mixed, {name}: median {statistics.median(each):.3f}, "
                  f"{sum(x >= 1 for x in each)} of {len(each)} rounds at least 1; ratio of the "
                  f"medians {of_medians:.3f} (rounds: {rounds})")  # fmt: skip
    print(f"worst difference between the ways' images of an item: {worst:.2e} (of 1.0)")


if __name__ == "__main__":
    main()
