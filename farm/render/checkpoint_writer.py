"""A diffusers pipeline written as one original-layout checkpoint: the `.safetensors` file
A1111, Forge and ComfyUI load (an SD1.x, SD2.x or SDXL pipeline whole; a Flux.1 or Chroma
pipeline's transformer alone, as Black Forest Labs and lodestones ship them).

It follows farm/families/checkpoint_layout.py tensor by tensor, the table planning checks
files against and the Flux loader converts with; the tests build their checkpoints here
and load them through diffusers' own converter.
"""

from __future__ import annotations

from pathlib import Path

from farm.families.checkpoint_layout import Tensor, flux_layout
from farm.families.single_file import layout_of


def original_state_dict(pipe) -> dict:
    """A diffusers pipeline's weights in the original single-file layout, every tensor
    of it (those diffusers never reads made as the original models hold them)."""
    from farm.render.pipelines import model_of

    family = model_of(pipe).family
    if family.denoiser == "transformer":
        layout = flux_layout(dict(pipe.transformer.config))
        states = {"transformer": pipe.transformer.state_dict()}
    else:
        configs = {"vae": dict(pipe.vae.config)}
        states = {"unet": pipe.unet.state_dict(), "vae": pipe.vae.state_dict()}
        for name in family.text_encoders:
            encoder = getattr(pipe, name)
            configs[name] = encoder.config.to_dict()
            # transformers ≥ 5.6 leaves the `text_model.` level out of CLIPTextModel's keys;
            # the original files, and the layout, keep it.
            wrapped = hasattr(encoder, "text_model")
            states[name] = {k if wrapped or k == "text_projection.weight" else f"text_model.{k}": v
                            for k, v in encoder.state_dict().items()}  # fmt: skip
        layout = layout_of(family, dict(pipe.unet.config), configs)
    return {t.key: _from_diffusers(t, states[t.component]) for t in layout}


def _from_diffusers(t: Tensor, state: dict):
    import math

    import torch

    if t.how == "extra":
        # Read by nobody (SD2.x's last OpenCLIP layer, its projection, the logit scale):
        # OpenCLIP's initial logit scale, zeros elsewhere.
        if t.key.endswith("logit_scale"):
            return torch.tensor(math.log(1 / 0.07))
        return torch.zeros(t.shape)
    tensors = [state[s].detach().cpu() for s in t.sources]
    if t.how == "cat":
        out = torch.cat(tensors, dim=0)
    elif t.how == "swap":
        first, second = tensors[0].chunk(2, dim=0)
        out = torch.cat([second, first], dim=0)
    elif t.how == "t":
        out = tensors[0].T
    elif t.how == "conv":
        out = tensors[0][:, :, None, None]
    else:
        out = tensors[0]
    return out.contiguous()


def write_checkpoint(pipe, out: str | Path) -> Path:
    """Write the pipeline as one original-layout `.safetensors` file (its dtypes kept)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_state_dict(pipe), str(out))
    return out
