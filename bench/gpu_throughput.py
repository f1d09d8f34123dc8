"""GPU throughput: images/s per GPU on an SD-1.5-architecture pipeline, farm vs bare diffusers.

The pipeline has SD 1.5's exact configs (UNet 320-640-1280-1280, CLIP-L-sized text
encoder, KL VAE) with random weights: the same compute as the real model, and nothing to
download. A random rank-16 LoRA on every attention projection is swept over strengths.
Both sides render the same items at 512x512, 25 Euler steps, fp16, CPU-seeded noise:

- baseline: the bare diffusers loop (set_adapters, then one pipeline call per batch);
- farm: RenderWorker.render over the sweep's units (two in flight, as on a Ray actor),
  which adds PNG encoding with infotext, sha256, writes and Parquet parts.

    python bench/gpu_throughput.py [--images 48] [--batch 1 4]
"""

from __future__ import annotations

import argparse
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
STRENGTHS = [0.0, 0.5, 1.0]


def build_model(root: Path) -> tuple[Path, Path]:
    """Save an SD-1.5-sized random pipeline and a random LoRA for it; return their paths."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from farm.render.tiny import build_tokenizer
    from farm.tiny_identity import SCHEDULER_CONFIG

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


def bare_loop(model: Path, lora: Path, seeds: list[int], batch: int) -> tuple[float, int]:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="x")
    jobs = [(w, p, s) for w in STRENGTHS for p in PROMPTS for s in seeds]
    pipe(PROMPTS[0], num_inference_steps=2)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        pipe.set_adapters(["x"], [chunk[0][0]])
        pipe(
            [p for _, p, _ in chunk],
            num_inference_steps=25,
            guidance_scale=7.5,
            width=512,
            height=512,
            generator=[torch.Generator("cpu").manual_seed(s) for _, _, s in chunk],
        )
    torch.cuda.synchronize()
    return time.perf_counter() - start, len(jobs)


def farm_worker(
    model: Path, lora: Path, seeds: list[int], batch: int, out: Path
) -> tuple[float, int]:
    import torch

    from farm.job import job_context
    from farm.spec import parse_spec
    from farm.store import LocalStore
    from farm.sweep import expand, group_units, make_plan
    from farm.worker import RenderWorker

    spec = parse_spec({
        "job": f"bench-b{batch}", "model": str(model), "prompts": PROMPTS, "seeds": seeds,
        "loras": [{"name": "x", "path": str(lora), "alpha": STRENGTHS}],
        "render": {"steps": 25, "width": 512, "height": 512, "batch": batch},
    })  # fmt: skip
    plan = make_plan(spec)
    store = LocalStore(out / spec.job)
    ctx = job_context(plan, store)
    worker = RenderWorker()
    units = list(group_units(expand(plan)))
    warm = worker.pipelines.get(ctx.model_path, ctx.model_fingerprint)
    warm.pipe(PROMPTS[0], num_inference_steps=2)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    # Two units in flight, as the executor keeps on each Ray actor.
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda u: worker.render(u, ctx), units))
    torch.cuda.synchronize()
    return time.perf_counter() - start, sum(r.images for r in reports)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="images per measurement")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    seeds = list(range(max(1, args.images // (len(PROMPTS) * len(STRENGTHS)))))
    with tempfile.TemporaryDirectory() as tmp:
        model, lora = build_model(Path(tmp))
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
        print("| batch | bare diffusers img/s | farm worker img/s | farm / bare |")
        print("| --- | --- | --- | --- |")
        for batch in args.batch:
            bare_s, n = bare_loop(model, lora, seeds, batch)
            farm_s, m = farm_worker(model, lora, seeds, batch, Path(tmp))
            assert n == m, (n, m)
            bare, farm = n / bare_s, m / farm_s
            print(f"| {batch} | {bare:.2f} | {farm:.2f} | {farm / bare:.3f} |", flush=True)


if __name__ == "__main__":
    main()
