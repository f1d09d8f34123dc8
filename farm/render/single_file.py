"""Pipelines from single-file checkpoints, offline.

An SD1.x, SD2.x or SDXL checkpoint loads with diffusers' `from_single_file`, always given
a local config folder (the spec's, or the family's standard configs that farm writes):
without one, diffusers looks the configs up on the Hugging Face hub, even with
`local_files_only`. A Flux.1 or Chroma transformer file is converted by farm at the
model's own widths (diffusers' converter assumes the released model's: a single block's
fused projection is split as 3072/3072/3072/12288) and loaded into the base folder's
pipeline in place of its transformer.
Loading follows farm/families/checkpoint_layout.py tensor by tensor, as does
farm/render/checkpoint_writer.py, which writes such files.
"""

from __future__ import annotations

from farm.families import Model
from farm.families.checkpoint_layout import Tensor, flux_layout
from farm.families.single_file import OPTIONAL, read_checkpoint


def checkpoint_pipeline(path: str, folder: str | None, model: Model, dtype):
    """The text-to-image pipeline of a checkpoint file (`dtype`: a torch dtype); planning
    checked the file against its configs."""
    import diffusers

    if model.family.denoiser == "transformer":
        return _transformer_pipeline(path, str(folder), model, dtype)
    from farm.families.standard_configs import standard_dir

    config = folder or str(standard_dir(model.family.key))
    cls = getattr(diffusers, str(model.index["_class_name"]))
    # A config folder may list a safety checker or an image processor: neither renders,
    # and planning did not ask the folder for them.
    unused = {name: None for name in OPTIONAL if name in model.index}
    return cls.from_single_file(path, config=config, local_files_only=True, torch_dtype=dtype,
                                **unused)  # fmt: skip


def _transformer_pipeline(path: str, base: str, model: Model, dtype):
    import diffusers
    from accelerate import init_empty_weights
    from safetensors import safe_open

    ckpt = read_checkpoint(path, f"model: {path}")
    config = dict(model.config)
    state = {}
    with safe_open(path, framework="pt") as f:
        for t in flux_layout(config):
            state.update(_to_diffusers(t, f.get_tensor(ckpt.prefix + t.key)))
    cls = getattr(diffusers, str(config.get("_class_name") or _transformer_class(model)))
    with init_empty_weights():
        transformer = cls.from_config(config)
    # Every parameter comes from the file: strict, so nothing is left on the meta device.
    transformer.load_state_dict(state, strict=True, assign=True)
    transformer = transformer.to(dtype).eval()
    pipeline = getattr(diffusers, str(model.index["_class_name"]))
    unused = {name: None for name in OPTIONAL if name in model.index}
    return pipeline.from_pretrained(base, transformer=transformer, dtype=dtype,
                                    use_safetensors=True, **unused)  # fmt: skip


def _transformer_class(model: Model) -> str:
    return "ChromaTransformer2DModel" if model.family.key == "chroma" else "FluxTransformer2DModel"


def _to_diffusers(t: Tensor, tensor) -> dict:
    """A file's tensor as the diffusers tensors it holds."""
    import torch

    if t.how == "cat":
        return dict(zip(t.sources, torch.split(tensor, list(t.parts), dim=0), strict=True))
    if t.how == "swap":
        first, second = tensor.chunk(2, dim=0)
        tensor = torch.cat([second, first], dim=0)
    elif t.how == "t":
        tensor = tensor.T
    elif t.how == "conv":
        tensor = tensor[:, :, 0, 0]
    return {t.sources[0]: tensor.contiguous()}
