"""GPU throughput: images/s per GPU on an SD-1.5-architecture pipeline, farm vs bare diffusers.

The headline is farm's best rate against the bare loop at its best batch (equal
strengths per call, as set_adapters allows), the comparison bench/worker_vs_loop.py makes
on a CPU; the ratio against the loop at batch 1 is kept beside it.

The pipeline has SD 1.5's exact configs (UNet 320-640-1280-1280, CLIP-L-sized text
encoder, KL VAE) with random weights: the same compute as the real model, and nothing to
download. A random rank-16 LoRA on every attention projection is swept over 11 strengths
(0, 0.1, …, 1) × 2 prompts × 4 seeds. Everything renders at 512×512, 25 Euler steps, fp16,
CPU-seeded noise, and writes a PNG per image:

- the bare diffusers loop at batch 1 and at its best batch (set_adapters, then one call
  per batch of equal strengths: one weight per adapter is all set_adapters holds);
- farm unbatched (batch 1), farm with batched grids (gradient units: one prompt and seed,
  every strength, in one call) per batch size, and with torch.compile: RenderWorker.render
  over the units, two in flight as on a Ray actor, with PNG and infotext, sha256, writes
  and Parquet parts;
- a time breakdown per stage (text encoder, denoising, VAE decode, PNG encode, write) in
  a pass of its own, as timing a stage needs a device sync;
- the worst pixel difference between a batched gradient and the same items one call
  each, in float16 and in bfloat16.

On the device machine farm's own light dependencies (pyarrow, click, PyYAML, rich) may
be missing: they can travel as wheels (see the device tool's notes).

One call of the device tool: built to finish in under 8 minutes on an H100-class GPU
(`--deadline` skips what is left, and prints what it measured). `--cpu` smoke-tests the
script itself on a CPU with small settings.

    python bench/gpu_throughput.py [--seeds 4] [--batches 4 8 16]
    python bench/gpu_throughput.py --cpu --size 64 --steps 2 --seeds 1 --batches 2 \
        --batch1-images 2 --no-compile
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

UNET = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
}
VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
}
PROMPTS = ["cyberpunk cityscape with neon lights", "portrait of a knight in a castle"]
STRENGTHS = [round(0.1 * i, 1) for i in range(11)]


def build_model(root: Path) -> tuple[Path, Path]:
    """Save an SD-1.5-sized random pipeline and a random LoRA for it; return their paths."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from farm.render.tiny import build_tokenizer
    from farm.tiny.identity import SCHEDULER_CONFIG

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**UNET),
        vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer.get_vocab()), **TEXT)),
        tokenizer=tokenizer,
        scheduler=__import__("diffusers").EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(torch.float16)
    model = root / "sd15-random"
    pipe.save_pretrained(model, safe_serialization=True)
    lora = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ".attn" in name:
            out_f, in_f = module.weight.shape
            lora[f"unet.{name}.lora_A.weight"] = torch.randn(16, in_f) / in_f**0.5
            lora[f"unet.{name}.lora_B.weight"] = torch.randn(out_f, 16) * 0.01
    path = root / "random-lora.safetensors"
    save_file({k: v.half().contiguous() for k, v in lora.items()}, str(path))
    return model, path


def bare_loop(
    pipe, seeds: list[int], batch: int, device: str, steps: int, size: int, limit: int | None = None
) -> tuple[float, int]:
    """The loop a user writes: set_adapters per batch of equal strengths, one call, PNGs."""
    import torch

    jobs = [(w, p, s) for w in STRENGTHS for p in PROMPTS for s in seeds][:limit]
    # Equal strengths only share a call: set_adapters holds one weight per adapter.
    chunks = [[j for j in jobs if j[0] == w] for w in STRENGTHS]
    chunks = [c[i : i + batch] for c in chunks for i in range(0, len(c), batch) if c]
    sync(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for i, chunk in enumerate(chunks):
            pipe.set_adapters(["x"], [chunk[0][0]])
            images = pipe(
                [p for _, p, _ in chunk],
                num_inference_steps=steps,
                guidance_scale=7.5,
                width=size,
                height=size,
                generator=[torch.Generator("cpu").manual_seed(s) for _, _, s in chunk],
            ).images
            for k, image in enumerate(images):
                image.save(Path(out) / f"{i}-{k}.png")
        sync(device)
        return time.perf_counter() - start, len(jobs)


def farm_worker(worker, model: Path, lora: Path, seeds: list[int], batch: int, out: Path,
                steps: int, size: int, compile_: bool = False,
                limit: int | None = None) -> tuple[float, int]:  # fmt: skip
    """RenderWorker.render over the sweep's units, two in flight as on a Ray actor."""
    from farm.plan.sweep import expand, group_units, make_plan
    from farm.run.job import job_context
    from farm.spec import parse_spec
    from farm.storage.store import LocalStore

    name = f"bench-b{batch}{'-compiled' if compile_ else ''}-{len(list(out.iterdir()))}"
    spec = parse_spec({
        "job": name, "model": str(model), "prompts": PROMPTS, "seeds": seeds,
        "loras": [{"name": "x", "path": str(lora), "alpha": STRENGTHS}],
        "render": {"steps": steps, "width": size, "height": size, "batch": batch,
                   "compile": compile_},
    })  # fmt: skip
    plan = make_plan(spec)
    ctx = job_context(plan, LocalStore(out / name))
    # Gradient units: one prompt and seed, strengths side by side, as in a strength sheet.
    items = sorted(expand(plan), key=lambda i: (i.text, i.seed))[:limit]
    units = list(group_units(items, plan.unit_size))
    sync(worker.device.name)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda u: worker.render(u, ctx), units))
    sync(worker.device.name)
    return time.perf_counter() - start, sum(r.images for r in reports)


def tolerance(worker, model: Path, lora: Path, out: Path, steps: int, size: int,
              batch: int) -> int:  # fmt: skip
    """Worst pixel difference (of 255) between a gradient rendered in calls of `batch`
    and the same items one call each, in the worker's dtype."""
    import io

    import numpy as np
    from PIL import Image

    from farm.storage.store import LocalStore

    images = []
    for b in (1, batch):
        before = set(out.iterdir())
        farm_worker(worker, model, lora, [0], b, out, steps, size, limit=len(STRENGTHS))
        (job,) = set(out.iterdir()) - before
        store = LocalStore(job)
        images.append({k: np.asarray(Image.open(io.BytesIO(store.get(k))).convert("RGB"))
                       for k in store.list("images/")})  # fmt: skip
    one, many = images
    return max(int(np.abs(one[k].astype(int) - many[k].astype(int)).max()) for k in one)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Stages:
    """Seconds per stage of the farm worker: forward hooks time the text encoder, the
    denoiser and the VAE decoder (with a device sync, so only in a pass of its own), and
    wrappers time PNG encoding and writes."""

    def __init__(self, pipe, device: str):
        import farm.worker.render_worker as worker_module

        self.seconds: dict[str, float] = {}
        self.device = device
        self._undo = []
        for stage, module in (("text encoder", pipe.text_encoder), ("denoising", pipe.unet),
                              ("VAE decode", pipe.vae.decoder)):  # fmt: skip
            self._hook(stage, module)
        encode = worker_module.encode_image

        def timed_encode(*args):
            t0 = time.perf_counter()
            try:
                return encode(*args)
            finally:
                self._add("PNG encode", time.perf_counter() - t0)

        worker_module.encode_image = timed_encode
        self._undo.append(lambda: setattr(worker_module, "encode_image", encode))
        from farm.storage.store import LocalStore

        put = LocalStore.put

        def timed_put(store, key, data):
            t0 = time.perf_counter()
            try:
                return put(store, key, data)
            finally:
                self._add("write", time.perf_counter() - t0)

        LocalStore.put = timed_put
        self._undo.append(lambda: setattr(LocalStore, "put", put))

    def _add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def _hook(self, stage: str, module) -> None:
        starts = []

        def before(*_):
            sync(self.device)
            starts.append(time.perf_counter())

        def after(*_):
            sync(self.device)
            self._add(stage, time.perf_counter() - starts.pop())

        handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
        self._undo.extend(h.remove for h in handles)

    def close(self) -> None:
        for undo in self._undo:
            undo()


def main() -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from farm.render.pipelines import quiet_libraries
    from farm.worker.render_worker import RenderWorker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds: images = 11 × 2 × seeds")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--batch1-images",
        type=int,
        default=12,
        help="images for the batch-1 runs (slow: kept short)",
    )
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--deadline",
        type=float,
        default=440.0,
        help="seconds after which remaining variants are skipped",
    )
    parser.add_argument("--cpu", action="store_true", help="smoke-test the script on a CPU")
    args = parser.parse_args()
    t_start = time.perf_counter()
    quiet_libraries()
    device = "cpu" if args.cpu else "cuda"
    dtype = torch.float32 if args.cpu else torch.float16
    seeds = list(range(args.seeds))
    results: list[tuple[str, float, int]] = []

    def record(label: str, seconds: float, images: int) -> None:
        results.append((label, images / seconds, images))
        print(f"{label}: {images / seconds:.2f} images/s ({images} in {seconds:.1f} s)",
              flush=True)  # fmt: skip

    def time_left() -> bool:
        left = args.deadline - (time.perf_counter() - t_start)
        if left < 0:
            print(f"deadline of {args.deadline:g} s reached: skipping the rest", flush=True)
        return left >= 0

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, lora = build_model(root)
        out = root / "jobs"
        out.mkdir()
        name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
        print(
            f"device: {name}, torch {torch.__version__}, {args.size}², {args.steps} steps, "
            f"{dtype}, model built in {time.perf_counter() - t_start:.0f} s",
            flush=True,
        )
        pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(lora), adapter_name="x")
        pipe(PROMPTS[0], num_inference_steps=2, width=args.size, height=args.size)  # warm-up
        kw = {"device": device, "steps": args.steps, "size": args.size}
        record("bare loop, batch 1", *bare_loop(pipe, seeds, 1, limit=args.batch1_images, **kw))
        best = (1, results[-1][1])
        for b in (b for b in args.batches if b <= len(PROMPTS) * len(seeds)):
            if not time_left():
                break
            record(f"bare loop, batch {b}", *bare_loop(pipe, seeds, b, **kw))
            best = max(best, (b, results[-1][1]), key=lambda x: x[1])
        del pipe
        torch.cuda.empty_cache() if device == "cuda" else None
        worker = RenderWorker(device)
        farm_kw = {"steps": args.steps, "size": args.size}
        farm_worker(worker, model, lora, seeds, 1, out, limit=2, **farm_kw)  # load, warm up
        record("farm, batch 1 (unbatched)",
               *farm_worker(worker, model, lora, seeds, 1, out, limit=args.batch1_images,
                            **farm_kw))  # fmt: skip
        for b in args.batches:
            if not time_left():
                break
            record(
                f"farm, batched grids, batch {b}",
                *farm_worker(worker, model, lora, seeds, b, out, **farm_kw),
            )
        grid = max((r for r in results if r[0].startswith("farm, batched")),
                   key=lambda r: r[1], default=None)  # fmt: skip
        grid_batch = int(grid[0].rsplit(" ", 1)[1]) if grid else 8
        if time_left():  # the stage breakdown, with syncs: a pass of its own
            stages = Stages(worker.pipelines.get(str(model)).pipe, device)
            try:
                seconds, images = farm_worker(worker, model, lora, seeds, grid_batch, out,
                                              **farm_kw)  # fmt: skip
            finally:
                stages.close()
            print(
                f"\nstages at batch {grid_batch}, {images} images, {seconds:.1f} s wall "
                "(PNG encode and write run on I/O threads, beside denoising):"
            )
            for stage, total in stages.seconds.items():
                print(f"  {stage}: {1000 * total / images:.1f} ms/image", flush=True)
        if time_left():  # batched against one call each, per half-precision dtype
            for dtype_name in ("float16", "bfloat16"):
                if device == "cpu" or not time_left():
                    break
                os.environ["FARM_DTYPE"] = dtype_name
                w = worker if dtype_name == "float16" else RenderWorker(device)
                worst = tolerance(w, model, lora, out, args.steps, args.size, grid_batch)
                print(f"{dtype_name}: batch {grid_batch} against batch 1, worst pixel "
                      f"difference {worst}/255", flush=True)  # fmt: skip
                if w is not worker:
                    del w
                    torch.cuda.empty_cache()
            os.environ.pop("FARM_DTYPE", None)
        if not args.no_compile and time_left():
            t0 = time.perf_counter()
            farm_worker(worker, model, lora, seeds, grid_batch, out, compile_=True, limit=1,
                        **farm_kw)  # the compile itself, once  # fmt: skip
            print(f"torch.compile warm-up: {time.perf_counter() - t0:.0f} s", flush=True)
            record(f"farm, batched grids + torch.compile, batch {grid_batch}",
                   *farm_worker(worker, model, lora, seeds, grid_batch, out, compile_=True,
                                **farm_kw))  # fmt: skip
    bare1 = results[0][1]
    # The headline: farm's best against the loop a careful user writes, at its best batch
    # (equal strengths per call, all that set_adapters holds); batch 1 is kept beside it.
    farm_best = max((r for r in results if r[0].startswith("farm")), key=lambda r: r[1])
    print(f"\nheadline: {farm_best[0]} renders {farm_best[1]:.2f} images/s, "
          f"{farm_best[1] / best[1]:.2f}× the bare loop at its best batch ({best[0]}, "
          f"{best[1]:.2f} images/s) on {name}")  # fmt: skip
    print(f"\n| variant | images/s | / bare best (batch {best[0]}) | / bare batch 1 |")
    print("| --- | --- | --- | --- |")
    for label, rate, _ in results:
        print(f"| {label} | {rate:.2f} | {rate / best[1]:.2f} | {rate / bare1:.2f} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
