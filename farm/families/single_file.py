"""Single-file checkpoints: what a `.safetensors` file is, told from its header alone, and
whether it fits the configs it will load with.

A checkpoint in the original layout (farm/families/checkpoint_layout.py) says its family
by its text encoders' prefixes: `cond_stage_model.transformer.text_model` for SD1.x,
`cond_stage_model.model.` (OpenCLIP) for SD2.x, `conditioner.embedders` for SDXL. A
Flux.1 or Chroma transformer file has `double_blocks`/`single_blocks` (Chroma also
`distilled_guidance_layer`, Flux.1-dev `guidance_in`) and nothing else of its pipeline.
diffusers' own detection falls back to SD1.x for anything it does not know (a LoRA
included) and takes a small SD2.x file for SD1.x: farm does not use it.

Before anything loads, the file's tensors are compared with the layout its configs
give: the configs of a folder the spec names, or the family's standard ones
(farm/families/standard_configs.py). A key the file lacks would load as an empty tensor
and fail mid-render ("Cannot copy out of meta tensor"), a shape that differs deep inside
the loader: both are refused here in one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from farm.families import FamilyError, Model, chroma, flux, read_folder, sd1, sd2, sdxl
from farm.families.base import Family
from farm.families.checkpoint_layout import Tensor, flux_layout, sd_layout
from farm.families.standard_configs import standard_config, standard_name
from farm.limits import PICKLE_SUFFIXES

SUFFIX = ".safetensors"
TRANSFORMER_PREFIX = "model.diffusion_model."
RENDERED = ("farm renders SD1.x, SD2.x and SDXL checkpoints, and Flux.1 and Chroma "
            "transformer files")  # fmt: skip
# Key patterns of checkpoints of families farm does not render: (pattern, family).
OTHER_FAMILIES = (
    (r"^joint_blocks\.", "SD3"),
    (r"^(double|single)_stream_modulation", "Flux.2"),
    (r"^transformer_blocks\.\d+\.img_mod\.", "Qwen-Image"),
    (r"^(cap_embedder|noise_refiner|context_refiner)\.", "Z-Image or Lumina 2"),
    (r"^double_stream_blocks\.", "HiDream"),
    (r"^double_layers\.", "AuraFlow"),
    (r"^head\.modulation$", "Wan"),
    (r"^txt_in\.individual_token_refiner\.", "HunyuanVideo"),
    (r"^blocks\.\d+\.cross_attn\.(q_linear|kv_linear)\.", "Sana"),
    (r"^(t_block\.|y_embedder\.)", "PixArt"),
)  # fmt: skip
# Pipeline components no render needs: a config or base folder need not hold them.
OPTIONAL = ("safety_checker", "feature_extractor", "image_encoder")
_LORA = re.compile(r"(^|[._])lora_|\.alpha$|\.(hada|lokr|oft)_|dora_scale")
_DIFFUSERS = re.compile(r"^(down_blocks|up_blocks|mid_block|encoder\.down_blocks|"
                        r"single_transformer_blocks|text_model\.encoder)\.")  # fmt: skip


def is_checkpoint_ref(model: str) -> bool:
    """Whether a `model:` reference names one weights file rather than a folder."""
    return model.lower().endswith(SUFFIX) or Path(model).suffix.lower() in PICKLE_SUFFIXES


@dataclass(frozen=True)
class Checkpoint:
    """A single-file checkpoint as its header describes it."""

    path: str
    family: Family
    kind: str  # "checkpoint" (a whole SD pipeline) or "transformer" (Flux.1/Chroma alone)
    shapes: dict[str, tuple[int, ...]]  # by key; a transformer's without its prefix
    prefix: str = ""  # a transformer file's key prefix (ComfyUI saves `model.diffusion_model.`)


def read_checkpoint(path: str | Path, where: str) -> Checkpoint:
    """The file's family and kind from its header; FamilyError for anything that is not
    a checkpoint farm renders (a LoRA, a VAE alone, another family, a pickle)."""
    from farm.loras.files import LoraError, read_header

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FamilyError(f"{where} is a pickle checkpoint ({path.suffix}), which can run code "
                          "when loaded; convert it to .safetensors")  # fmt: skip
    try:
        header, _ = read_header(path)
    except LoraError as err:
        raise FamilyError(f"{where.split(':')[0]}: {err}") from None
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    keys = list(shapes)
    if sum(bool(_LORA.search(k)) for k in keys) > len(keys) // 2:
        raise FamilyError(f"{where} is a LoRA, not a model checkpoint; list it under loras: "
                          "and give its base model as model:")  # fmt: skip
    if any(k.endswith(("scaled_fp8", ".scale_weight", ".weight_scale")) for k in keys):
        # Its fp8 weights are only right times their scales, which no loader here applies.
        raise FamilyError(f"{where} is a scaled-fp8 checkpoint; give the model's bf16, fp16 "
                          "or fp32 file")  # fmt: skip
    family = _sd_family(keys, where)
    if family is not None:
        if not any(k.startswith(TRANSFORMER_PREFIX) for k in keys):
            raise FamilyError(f"{where} holds an {family.name} text encoder without its UNet; "
                              "give the whole checkpoint")  # fmt: skip
        return Checkpoint(str(path), family, "checkpoint", shapes)
    prefix = TRANSFORMER_PREFIX if any(k.startswith(TRANSFORMER_PREFIX) for k in keys) else ""
    bare = {k.removeprefix(prefix): v for k, v in shapes.items()}
    for pattern, name in OTHER_FAMILIES:
        if any(re.search(pattern, k) for k in bare):
            raise FamilyError(f"{where} is {_a(name)} checkpoint; {RENDERED}")
    if any(k.startswith(("double_blocks.", "single_blocks.")) for k in bare):
        if any(k.startswith("distilled_guidance_layer.") for k in bare):
            family = chroma.FAMILY
        elif any(k.startswith("guidance_in.") for k in bare):
            family = flux.DEV
        else:
            family = flux.SCHNELL
        return Checkpoint(str(path), family, "transformer", bare, prefix)
    if any(k.startswith(TRANSFORMER_PREFIX + "input_blocks.") for k in keys):
        raise FamilyError(f"{where} holds a UNet without its text encoder; give the whole "
                          "checkpoint (UNet, VAE and text encoder)")  # fmt: skip
    vae = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model.")
    if all(k.startswith(vae) for k in keys):
        raise FamilyError(f"{where} is a VAE alone, not a model checkpoint; give the "
                          "whole checkpoint")  # fmt: skip
    if any(_DIFFUSERS.match(k) for k in bare):
        raise FamilyError(f"{where} is one component of a diffusers model (diffusers' key "
                          "names); give the model's whole diffusers folder, or a checkpoint "
                          "in the original layout")  # fmt: skip
    first = ", ".join(keys[:3])
    raise FamilyError(f"{where} is not a checkpoint farm can tell (its keys: {first}, …); "
                      f"{RENDERED}")  # fmt: skip


def _a(name: str) -> str:
    # Said as letters (an SD3, an SDXL) or as a word (a Qwen-Image).
    return f"an {name}" if name.startswith(("SD", "A", "E", "I", "O", "U")) else f"a {name}"


def _sd_family(keys: list[str], where: str) -> Family | None:
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return sdxl.FAMILY
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise FamilyError(f"{where} is an SDXL refiner checkpoint; {RENDERED}")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return sd2.FAMILY
    if any(k.startswith("cond_stage_model.transformer.text_model") for k in keys):
        return sd1.FAMILY
    return None


# ------------------------------------------------------------------ checks and configs


def checkpoint_model(path: str | Path, where: str, folder: str | None = None,
                     folder_field: str = "") -> Model:  # fmt: skip
    """The model a single file gives, checked against its configs: a whole SD checkpoint
    with the config folder named (or farm's standard configs), or a Flux.1/Chroma
    transformer with the diffusers folder that gives the rest of its pipeline.

    `where` names the file in messages (`model: PATH`), `folder_field` the folder's
    field (`model.config`, `model.base`): which one the spec used says what it expects.
    """
    ckpt = read_checkpoint(path, where)
    if ckpt.kind == "transformer":
        if folder is None or folder_field.endswith(".config"):
            raise FamilyError(
                f"{where} is {_a(ckpt.family.name)} transformer alone (no VAE or text encoders): "
                "name the diffusers folder that gives the rest of the pipeline: "
                "model: {transformer: FILE, base: FOLDER}"
            )
        return _transformer_model(ckpt, Path(folder), where, folder_field)
    if folder_field.endswith(".base"):
        raise FamilyError(f"{where} is a whole {ckpt.family.name} checkpoint, not a "
                          "transformer alone: write model: FILE, or model: {file: FILE, "
                          "config: FOLDER}")  # fmt: skip
    if folder is not None:
        return _named_configs(ckpt, Path(folder), where, folder_field)
    return _standard_configs(ckpt, where)


def _transformer_model(ckpt: Checkpoint, base: Path, where: str, field: str) -> Model:
    there = f"{field}: {base}"
    model = read_folder(base, there)
    if model.family is not ckpt.family:
        raise FamilyError(f"{there} is {_a(model.family.name)} pipeline; "
                          f"{where.split(': ', 1)[1]} is {_a(ckpt.family.name)} transformer: "
                          "name a base of its own family")  # fmt: skip
    _need_files(base, model.index, there, weights=True, skip=("transformer",))
    check_tensors(ckpt, flux_layout(model.config), where,
                  f"by {base}/transformer/config.json", "name the base folder of this "
                  "transformer's own model")  # fmt: skip
    return Model(model.family, model.config, model.index)


def _named_configs(ckpt: Checkpoint, folder: Path, where: str, field: str) -> Model:
    there = f"{field}: {folder}"
    model = read_folder(folder, there)
    if model.family is not ckpt.family:
        raise FamilyError(f"{there} holds {model.family.name} configs; {where.split(': ', 1)[1]} "
                          f"is {_a(ckpt.family.name)} checkpoint: name its own model's "
                          "config folder")  # fmt: skip
    _need_files(folder, model.index, there, weights=False, skip=("unet",))
    configs = {name: _json(folder / name / "config.json", there)
               for name in ("vae", *ckpt.family.text_encoders)}  # fmt: skip
    check_tensors(ckpt, layout_of(ckpt.family, model.config, configs), where,
                  f"by the configs in {folder}", "name the config folder of this "
                  "checkpoint's own model")  # fmt: skip
    return Model(model.family, model.config, model.index)


def _standard_configs(ckpt: Checkpoint, where: str) -> Model:
    key = ckpt.family.key
    configs = {name: standard_config(key, name) for name in ("vae", *ckpt.family.text_encoders)}
    unet = standard_config(key, "unet")
    check_tensors(ckpt, layout_of(ckpt.family, unet, configs), where,
                  f"in {standard_name(key)} (farm's standard {ckpt.family.name} configs)",
                  "a model of other widths needs its own configs: "
                  "model: {file: FILE, config: FOLDER} naming its diffusers folder")  # fmt: skip
    return Model(ckpt.family, unet, standard_config(key, "model_index"))


def layout_of(family: Family, unet: dict, configs: dict[str, dict]) -> list[Tensor]:
    """The original layout of an SD-family checkpoint of these component configs."""
    return sd_layout(unet, configs["vae"], configs["text_encoder"],
                     configs.get("text_encoder_2"), open_clip=family is sd2.FAMILY)  # fmt: skip


def check_tensors(ckpt: Checkpoint, expected: list[Tensor], where: str, against: str,
                  fix: str) -> None:  # fmt: skip
    """Refuse a file whose tensors differ from the layout: a shape first (a file of other
    widths), then the keys it lacks."""
    for t in expected:
        shape = ckpt.shapes.get(t.key)
        if shape is not None and shape != t.shape:
            raise FamilyError(f"{where}: {ckpt.prefix}{t.key} is {list(shape)} in the file, "
                              f"{list(t.shape)} {against}; {fix}")  # fmt: skip
    missing = [t.key for t in expected if t.needed and t.key not in ckpt.shapes]
    if missing:
        shown = ", ".join(ckpt.prefix + k for k in missing[:3])
        more = ", …" if len(missing) > 3 else ""
        raise FamilyError(f"{where}: {len(missing)} tensors of its {ckpt.family.name} model "
                          f"are not in the file ({shown}{more}); the file is incomplete or of "
                          "another model: export it again whole")  # fmt: skip


def _need_files(folder: Path, index: dict, where: str, weights: bool,
                skip: tuple[str, ...]) -> None:  # fmt: skip
    """Every component folder a load reads: its config, a tokenizer's vocabulary, and
    (`weights`) its weights."""
    for name, value in index.items():
        if name.startswith("_") or name in skip or not isinstance(value, list):
            continue
        if not value or value[0] is None or name in OPTIONAL:
            continue
        sub = folder / name
        if name.startswith("tokenizer"):
            if not ((sub / "tokenizer.json").is_file() or (sub / "vocab.json").is_file()
                    or (sub / "spiece.model").is_file()):  # fmt: skip
                raise FamilyError(f"{where}: {name}/ has no vocabulary (tokenizer.json, or "
                                  "vocab.json and merges.txt); copy it from the model's "
                                  "diffusers folder")  # fmt: skip
        elif name.startswith("scheduler"):
            if not (sub / "scheduler_config.json").is_file():
                raise FamilyError(f"{where}: {name}/scheduler_config.json is missing; copy it "
                                  "from the model's diffusers folder")  # fmt: skip
        else:
            if not (sub / "config.json").is_file():
                raise FamilyError(f"{where}: {name}/config.json is missing; copy it from the "
                                  "model's diffusers folder")  # fmt: skip
            if weights and not any(sub.glob("*.safetensors")):
                raise FamilyError(f"{where}: {name}/ has no .safetensors weights; the base "
                                  "folder gives every component but the transformer")  # fmt: skip


def _json(path: Path, where: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        raise FamilyError(f"{where}: {path.parent.name}/{path.name} is missing or not "
                          "JSON") from None  # fmt: skip
    if not isinstance(value, dict):
        raise FamilyError(f"{where}: {path.parent.name}/{path.name} is not a mapping")
    return value
