"""Train the tiny model and its two demo LoRAs from a seed, on pictures drawn by
farm/training/shapes.py.

Four stages, each on the CPU, all in fp32 and shipped in fp16:
1. the VAE, on random crops of plain, neon and ink pictures. Besides reconstruction and a
   tiny KL term, three latent channels are pulled toward the picture averaged over 8×8
   cells, so a latent carries its colours plainly and the UNet has an easy space to learn.
   The latent scale is then folded into the VAE's 1×1 convolutions, so SD 1.5's
   scaling_factor (0.18215) gives unit-variance latents;
2. the UNet with the text encoder, jointly: ε-prediction on SD 1.5's DDPM schedule,
   min-SNR weighting, one prompt in ten dropped for guidance, an EMA of the weights;
3. `neon` and `ink`: peft LoRAs on the UNet's transformer layers and the text encoder,
   trained on the same scenes drawn in each style, with the same prompts. Each step draws
   a strength s in [0, 1], runs the LoRA at s and aims at the picture s of the way from
   plain to styled (their latents mixed), so the style grows with the strength instead of
   switching on; a quarter of the steps train s = 1, the full style. The LoRA stage seeds
   itself, so it can also run alone on trained base weights (`--base`).

Runs are deterministic for a given seed, torch version and thread count: torch's
deterministic algorithms are on, and the data is drawn from the seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from farm.training.data import draw_set
from farm.training.recipe import DEFAULT, Log, Recipe
from farm.training.save import round_fp16, save_lora, save_model, save_modules
from farm.training.stages import encode, fold_latent_scale, train_lora, train_unet, train_vae


def train(out: Path, recipe: Recipe = DEFAULT, log: Log = print, checkpoint_every: int = 0,
          base: Path | None = None) -> dict:  # fmt: skip
    """Train everything and write the shipped files to `out`; returns the training record.

    With `checkpoint_every`, the UNet's and text encoder's EMA weights are also written to
    out/checkpoints/step-N/ every that many steps, to see how drawing improves, and each
    LoRA's to out/checkpoints/NAME/ as a training run saves them (kohya's step names and
    `ss_steps`, the final save last): the run a spec sweeps with `checkpoints:`. They take
    no random draws, so the final weights are the same with or without them.

    With `base` (a folder of unet, vae and text_encoder .safetensors, such as the shipped
    weights), the first two stages are skipped: the LoRAs are trained on those weights,
    which are copied to `out` unchanged.
    """
    import shutil

    import torch

    from farm.render.tiny import build_tiny_pipeline

    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(recipe.seed)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"recipe": asdict(recipe), "torch": torch.__version__, "stages": {}}
    started = time.monotonic()

    pipe = build_tiny_pipeline(base, seed=recipe.seed)
    styled = {name: draw_set(recipe.lora_images, recipe.seed + 1, style=name)
              for name, _ in recipe.loras}  # fmt: skip
    if base is None:
        plain = draw_set(recipe.images, recipe.seed)
        with _stage(record, "vae", log):
            vae_images = np.concatenate([plain.images, *(s.images for s in styled.values())])
            record["stages"]["vae"] |= train_vae(pipe.vae, vae_images, recipe, log)
            fold_latent_scale(pipe.vae, vae_images[:: max(1, len(vae_images) // 512)])
            round_fp16(pipe.vae)
        save_model(pipe, out, recipe, names=("vae",))
        with _stage(record, "unet", log):
            latents = encode(pipe.vae, plain.images)
            snapshot = None
            if checkpoint_every:

                def snapshot(step, unet, text):
                    folder = out / "checkpoints" / f"step-{step}"
                    folder.mkdir(parents=True, exist_ok=True)
                    save_modules({"unet": unet, "text_encoder": text}, folder, recipe)

            losses = train_unet(pipe, latents, plain.prompts, recipe, log, snapshot=snapshot,
                                every=checkpoint_every)  # fmt: skip
            record["stages"]["unet"] |= losses
            round_fp16(pipe.unet, pipe.text_encoder)
        save_model(pipe, out, recipe)
    else:
        record["base"] = str(base)
        # As the stages above leave them: a module's mode picks its kernels, and so its bits.
        for module in (pipe.vae, pipe.unet, pipe.text_encoder):
            module.eval()
        for name in ("unet", "vae", "text_encoder"):
            shutil.copyfile(base / f"{name}.safetensors", out / f"{name}.safetensors")
    # The same scenes as the styled sets, drawn plain: what strength 0 aims at.
    plain_scenes = draw_set(recipe.lora_images, recipe.seed + 1)
    plain_latents = encode(pipe.vae, plain_scenes.images)
    for name, lora in recipe.loras:
        with _stage(record, name, log):
            latents = encode(pipe.vae, styled[name].images)
            run = out / "checkpoints" / name  # the LoRA's training run, as farm sweeps one

            def keep(step: int, tensors: dict, name=name, lora=lora, run=run) -> None:
                # kohya's names and metadata for a step save: `name-step00000150`, ss_steps.
                save_lora(tensors, lora, run / f"{name}-step{step:08d}.safetensors", name,
                          {"ss_steps": str(step)})  # fmt: skip

            tensors, losses = train_lora(pipe, plain_latents, latents, styled[name].prompts,
                                         lora, recipe, log, snapshot=keep if checkpoint_every
                                         else None, every=checkpoint_every)  # fmt: skip
            record["stages"][name] |= losses
            save_lora(tensors, lora, out / f"{name}.safetensors", name)
            if checkpoint_every:  # the run's last save, at its full step count
                save_lora(tensors, lora, run / f"{name}.safetensors", name,
                          {"ss_steps": str(recipe.lora_steps)})  # fmt: skip
    record["seconds"] = round(time.monotonic() - started, 1)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


class _stage:
    def __init__(self, record: dict, name: str, log: Log):
        self.record, self.name, self.log = record, name, log

    def __enter__(self):
        self.log(f"{self.name}: training")
        self.record["stages"][self.name] = {}
        self.t = time.monotonic()

    def __exit__(self, *exc):
        seconds = round(time.monotonic() - self.t, 1)
        self.record["stages"][self.name]["seconds"] = seconds
        self.log(f"{self.name}: {seconds} s")
