"""The tiny model's training stages (farm/training/tiny.py runs them in order): the VAE,
the UNet with the text encoder, and the two demo LoRAs, with their schedules and steps."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from farm.training.data import drop_prompts
from farm.training.recipe import (
    MIN_SNR,
    SCALING_FACTOR,
    TEXT_TARGETS,
    UNET_TARGETS,
    Log,
    LoraRecipe,
    Recipe,
)

# ---------------------------------------------------------------- schedules


def _lr_at(step: int, steps: int, peak: float) -> float:
    # Warm up over the first 5%, then a cosine down to a tenth of the peak.
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    done = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def _set_lr(optimizer, step: int, steps: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = _lr_at(step, steps, group["peak"])


def _update(optimizer, loss, params: list, losses: list[float]) -> None:
    """One optimizer step on `loss`, gradients clipped to norm 1; the loss is recorded."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    losses.append(loss.item())


def _log_every_100(log: Log, stage: str, step: int, steps: int, losses: list[float]) -> None:
    if step % 100 == 0 or step == steps - 1:
        log(f"{stage} step {step}: loss {np.mean(losses[-100:]):.4f}")


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------- the VAE


def train_vae(vae, images: np.ndarray, recipe: Recipe, log: Log) -> dict:
    """Reconstruction (MSE + L1), a 1e-6 KL term and the colour-cell pull on the latents."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(recipe.seed + 10)
    vae.train()
    params = list(vae.parameters())
    optimizer = torch.optim.AdamW([{"params": params, "peak": recipe.vae_lr}], weight_decay=0)
    crop, cell = recipe.vae_crop, 8
    losses = []
    for step in range(recipe.vae_steps):
        _set_lr(optimizer, step, recipe.vae_steps)
        idx = rng.integers(0, len(images), recipe.vae_batch)
        # Crops on the latent grid: a crop's cells are the picture's cells.
        ys, xs = (rng.integers(0, (128 - crop) // cell + 1, recipe.vae_batch) * cell
                  for _ in range(2))  # fmt: skip
        batch = np.stack([images[i, y : y + crop, x : x + crop]
                          for i, y, x in zip(idx, ys, xs, strict=True)])  # fmt: skip
        x = _to_tensor(batch)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample()
        recon = vae.decode(z).sample
        cells = F.avg_pool2d(x, cell)
        loss = (
            F.mse_loss(recon, x)
            + 0.5 * F.l1_loss(recon, x)
            + 1e-6 * posterior.kl().mean()
            + 0.1 * F.mse_loss(posterior.mean[:, :3], cells)
        )
        _update(optimizer, loss, params, losses)
        _log_every_100(log, "vae", step, recipe.vae_steps, losses)
    vae.eval()
    return {"final_loss": round(float(np.mean(losses[-50:])), 5)}


def fold_latent_scale(vae, images: np.ndarray) -> float:
    """Scale the latent space so SD 1.5's scaling_factor gives unit variance; returns the
    factor. The encoder's last 1×1 conv is scaled up and the decoder's first scaled down:
    decoding is unchanged up to rounding."""
    import torch

    with torch.no_grad():
        means = torch.cat([vae.encode(_to_tensor(images[i : i + 64])).latent_dist.mean
                           for i in range(0, len(images), 64)])  # fmt: skip
        scale = float(1.0 / SCALING_FACTOR / means.std().clamp_min(1e-6))
        channels = vae.config.latent_channels
        vae.quant_conv.weight[:channels] *= scale
        vae.quant_conv.bias[:channels] *= scale
        vae.quant_conv.bias[channels:] += 2 * math.log(scale)
        vae.post_quant_conv.weight /= scale
    return scale


def encode(vae, images: np.ndarray):
    """Latent means of the pictures, times the scaling factor: what the UNet denoises."""
    import torch

    with torch.no_grad():
        means = [vae.encode(_to_tensor(images[i : i + 64])).latent_dist.mean
                 for i in range(0, len(images), 64)]  # fmt: skip
        return torch.cat(means) * vae.config.scaling_factor


# ---------------------------------------------------------------- the UNet and text encoder


def _tokens(tokenizer, prompts: list[str]):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids  # fmt: skip


def _diffusion_step(pipe, latents, prompts: list[str], generator):
    """The ε-prediction loss of one batch, min-SNR weighted."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    schedule = getattr(pipe, "_farm_ddpm", None)
    if schedule is None:
        schedule = pipe._farm_ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, schedule.config.num_train_timesteps, (len(latents),),
                      generator=generator)  # fmt: skip
    noisy = schedule.add_noise(latents, noise, t)
    context = pipe.text_encoder(_tokens(pipe.tokenizer, prompts))[0]
    pred = pipe.unet(noisy, t, context).sample
    alpha = schedule.alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    weight = torch.clamp(snr, max=MIN_SNR) / snr
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def train_unet(pipe, latents, prompts: list[str], recipe: Recipe, log: Log,
               snapshot: Callable[[int, object, object], None] | None = None,
               every: int = 0) -> dict:  # fmt: skip
    """Joint training; `snapshot(step, ema_unet, ema_text)` sees the EMA weights every
    `every` steps (a trial's learning curve), the shipped run needs none."""
    import copy

    import torch

    rng = np.random.default_rng(recipe.seed + 20)
    generator = torch.Generator().manual_seed(recipe.seed + 21)
    unet, text = pipe.unet, pipe.text_encoder
    unet.train()
    text.train()
    optimizer = torch.optim.AdamW(
        [{"params": list(unet.parameters()), "peak": recipe.unet_lr},
         {"params": list(text.parameters()), "peak": recipe.text_lr}],
        weight_decay=1e-2,
    )  # fmt: skip
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)]
    losses = []
    for step in range(recipe.unet_steps):
        _set_lr(optimizer, step, recipe.unet_steps)
        idx = rng.integers(0, len(latents), recipe.unet_batch)
        batch = drop_prompts([prompts[i] for i in idx], rng)
        loss = _diffusion_step(pipe, latents[idx], batch, generator)
        _update(optimizer, loss, [*unet.parameters(), *text.parameters()], losses)
        decay = min(recipe.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, model in zip(ema, (unet, text), strict=True):
                for s, p in zip(shadow.parameters(), model.parameters(), strict=True):
                    s.lerp_(p, 1 - decay)
        _log_every_100(log, "unet", step, recipe.unet_steps, losses)
        if snapshot is not None and every and (step + 1) % every == 0:
            snapshot(step + 1, *ema)
    with torch.no_grad():
        for shadow, model in zip(ema, (unet, text), strict=True):
            for s, p in zip(shadow.parameters(), model.parameters(), strict=True):
                p.copy_(s)
    unet.eval()
    text.eval()
    return {"final_loss": round(float(np.mean(losses[-50:])), 5)}


# ---------------------------------------------------------------- LoRAs


def train_lora(pipe, plain, styled, prompts: list[str], lora: LoraRecipe, recipe: Recipe,
               log: Log, snapshot=None, every: int = 0) -> tuple[dict, dict]:  # fmt: skip
    """Train one LoRA on the UNet and text encoder; returns its PEFT-layout tensors
    (`unet.…lora_A.weight`) and its losses. The base model is left as it was.

    With `snapshot` and `every`, `snapshot(step, tensors)` gets a copy of the LoRA every
    that many steps before the last, as a training run saves checkpoints; copying takes
    no random draws, so the final LoRA is the same with or without them.

    `plain` and `styled` are the latents of the same scenes drawn both ways. Each step runs
    the LoRA at a strength s and aims at the latents s of the way from plain to styled.
    """
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    # Seeded here, not by the stages before: the LoRAs come out the same whether they are
    # trained after the base or alone on its saved weights.
    torch.manual_seed(recipe.seed + 32 + lora.rank)
    rng = np.random.default_rng(recipe.seed + 30 + lora.rank)
    generator = torch.Generator().manual_seed(recipe.seed + 31 + lora.rank)
    unet, text = pipe.unet, pipe.text_encoder
    unet.requires_grad_(False)
    text.requires_grad_(False)
    name = "farm_lora"
    for model, targets in ((unet, UNET_TARGETS), (text, TEXT_TARGETS)):
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=targets,
                            init_lora_weights="gaussian")  # fmt: skip
        inject_adapter_in_model(config, model, adapter_name=name)
    layers = [m for model in (unet, text) for m in model.modules() if isinstance(m, LoraLayer)]
    params = [p for m in (unet, text) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": params, "peak": recipe.lora_lr}], weight_decay=0)
    losses = []
    unet.train()
    text.train()
    for step in range(recipe.lora_steps):
        _set_lr(optimizer, step, recipe.lora_steps)
        strength = 1.0 if rng.random() < recipe.lora_full_share else float(rng.random())
        for layer in layers:
            layer.set_scale(name, strength)
        idx = rng.integers(0, len(styled), recipe.lora_batch)
        target = torch.lerp(plain[idx], styled[idx], strength)
        batch = drop_prompts([prompts[i] for i in idx], rng)
        loss = _diffusion_step(pipe, target, batch, generator)
        _update(optimizer, loss, params, losses)
        _log_every_100(log, "lora", step, recipe.lora_steps, losses)
        if snapshot is not None and every and (step + 1) % every == 0 \
                and step + 1 < recipe.lora_steps:  # fmt: skip
            copy = {}
            for prefix, model in (("unet", unet), ("text_encoder", text)):
                copy |= _take_adapter(model, name, prefix, remove=False)
            snapshot(step + 1, copy)
    unet.eval()
    text.eval()
    tensors = {}
    for prefix, model in (("unet", unet), ("text_encoder", text)):
        tensors |= _take_adapter(model, name, prefix)
    return tensors, {"final_loss": round(float(np.mean(losses[-50:])), 5)}


def _take_adapter(model, name: str, prefix: str, remove: bool = True) -> dict:
    """The adapter's A and B weights in PEFT layout, removed from the model (or left in
    it, for a checkpoint)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from farm.render.tiny import canonical_key

    tensors = {}
    for path, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and name in module.lora_A:
            where = canonical_key(path, model)
            for kind in ("A", "B"):
                weight = getattr(module, f"lora_{kind}")[name].weight.detach().clone()
                tensors[f"{prefix}.{where}.lora_{kind}.weight"] = weight
            if remove:
                module.delete_adapter(name)
    return tensors
