"""A learning curve for the tiny model's recipe: how well it draws after N UNet steps.

    python bench/tiny_trial.py OUT [--unet-steps 1500] [--every 500] [--threads 2]

Trains the VAE as the recipe does, then the UNet and text encoder for --unet-steps,
keeping the EMA weights every --every steps; then renders the probe prompts with each
snapshot and prints what the probe reads (colour, shape, background), the seconds per
training step, and one 128×128, 20-step render's time on one thread. Sizes the recipe;
the shipped weights come from `farm model train-tiny`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--unet-steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae-steps", type=int, default=None)
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    from farm.render.tiny import build_tiny_pipeline
    from farm.training import tiny
    from farm.training.data import draw_set
    from farm.training.evaluate import evaluate, prompts_on

    recipe = replace(tiny.Recipe(), threads=args.threads, unet_steps=args.unet_steps)
    if args.vae_steps is not None:
        recipe = replace(recipe, vae_steps=args.vae_steps)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    record: dict = {"recipe": asdict(recipe)}
    t0 = time.monotonic()
    pipe = build_tiny_pipeline(seed=recipe.seed)
    plain = draw_set(recipe.images, recipe.seed)
    styled = [draw_set(recipe.lora_images, recipe.seed + 1, style=n) for n, _ in recipe.loras]
    record["draw_s"] = round(time.monotonic() - t0, 1)
    print(f"drew {recipe.images} + {2 * recipe.lora_images} pictures in {record['draw_s']} s")

    t0 = time.monotonic()
    images = np.concatenate([plain.images, *(s.images for s in styled)])
    tiny.train_vae(pipe.vae, images, recipe, print)
    tiny.fold_latent_scale(pipe.vae, images[:: max(1, len(images) // 512)])
    tiny._round_fp16(pipe.vae)
    record["vae_s_per_step"] = round((time.monotonic() - t0) / max(1, recipe.vae_steps), 3)
    latents = tiny.encode(pipe.vae, plain.images)

    snapshots: list[int] = []

    def keep(step: int, unet, text) -> None:
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
                  str(args.out / f"unet-{step}.safetensors"))  # fmt: skip
        save_file({k: v.contiguous() for k, v in text.state_dict().items()},
                  str(args.out / f"text-{step}.safetensors"))  # fmt: skip
        snapshots.append(step)
        print(f"snapshot at step {step}, {time.monotonic() - t0:.0f} s into the UNet stage")

    t0 = time.monotonic()
    tiny.train_unet(pipe, latents, plain.prompts, recipe, print, snapshot=keep,
                    every=args.every)  # fmt: skip
    record["unet_s_per_step"] = round((time.monotonic() - t0) / max(1, recipe.unet_steps), 3)

    others = ("black", "gray", "blue", "green")
    combos = prompts_on("white") + [("red", "circle", b) for b in others]
    record["scores"] = {}
    for step in snapshots:
        pipe.unet.load_state_dict(load_file(str(args.out / f"unet-{step}.safetensors")))
        pipe.text_encoder.load_state_dict(load_file(str(args.out / f"text-{step}.safetensors")))
        result = evaluate(pipe, combos, seeds=[0])
        record["scores"][step] = asdict(result)
        print(f"step {step}: {result.line()}")

    torch.set_num_threads(1)
    generator = torch.Generator("cpu").manual_seed(0)
    pipe("a red circle on a white background", num_inference_steps=2, height=128, width=128,
         generator=generator)  # fmt: skip
    t0 = time.monotonic()
    pipe("a red circle on a white background", num_inference_steps=20, height=128, width=128,
         generator=generator)  # fmt: skip
    record["render_128_20_steps_1_thread_s"] = round(time.monotonic() - t0, 3)
    print(json.dumps({k: v for k, v in record.items() if k != "scores"}, indent=1))
    (args.out / "trial.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
