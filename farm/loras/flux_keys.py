"""Flux.1 and Chroma LoRA keys, converted to diffusers/PEFT names with numpy.

A Flux.1 or Chroma LoRA is shared in several key layouts; `to_diffusers` turns any of them
(or a mix, key group by key group) into one diffusers/PEFT state dict:
`transformer.{module}.lora_A.weight` / `lora_B.weight` for the transformer and
`text_encoder.{module}.lora_A.weight` / `lora_B.weight` for CLIP-L, in float32, with each
module's alpha/rank folded into lora_B (so the adapter loads with scale 1). The code is
the same for every transformer family: `Layers` says which layers a model has, at which
widths, and what its original code calls them (`Widths` for Flux.1 and Chroma; the other
families' own in farm/families).

Accepted layouts:

- diffusers/PEFT (ai-toolkit, diffusers' trainers): `transformer.{module}.lora_A.weight`,
  `text_encoder.{module}…`, also without the `transformer.` prefix. Alphas, if any, live in
  the file's metadata: the caller passes them (`alphas`); `.alpha` tensors are folded too.
- kohya sd-scripts: `lora_unet_{bfl_module_with_underscores}.lora_down.weight` /
  `lora_up.weight` / `alpha`, in the original (BFL) module names: `double_blocks_{i}_img_attn_qkv`,
  `_img_attn_proj`, `_img_mlp_0`, `_img_mlp_2`, `_img_mod_lin` and their `txt_` twins;
  `single_blocks_{i}_linear1`, `_linear2`, `_modulation_lin`; `img_in`, `txt_in`,
  `time_in_{in,out}_layer`, `vector_in_…`, `guidance_in_…`, `final_layer_linear`,
  `final_layer_adaLN_modulation_1`, and Chroma's `distilled_guidance_layer_…`.
  CLIP-L is `lora_te1_` (or `lora_te_`); T5 (`lora_te2_`) is not converted.
- OneTrainer: `lora_transformer_{diffusers_module_with_underscores}` with lora_down/lora_up/
  alpha, and `lora_te1_` for CLIP-L.
- ComfyUI: `diffusion_model.{bfl.module}` with lora_A/lora_B or lora_down/lora_up (and
  `.alpha`), and `text_encoders.clip_l.transformer.{module}` for CLIP-L.

Underscores alone cannot say where a dot was, so kohya and OneTrainer names are resolved
against the module names of the model being loaded, which `Widths` enumerates from the
transformer's config. A key group whose modules the model does not have is returned in
`Converted.dropped`, not guessed at: T5 keys, Chroma's per-block modulation and final
adaLN keys (its norms are pruned), DoRA/LoCon/LoHa groups, unknown names.

Fused modules: the original Flux.1 blocks compute q, k and v with one linear (`qkv`; in
single blocks `linear1` also computes the MLP input), where diffusers has one linear per
target. A fused LoRA has one lora_down (rank r) and one lora_up whose rows are the targets'
outputs concatenated in order (q, k, v[, proj_mlp]). Each target gets the whole lora_down
as its lora_A and its own row block of lora_up (times alpha/rank) as its lora_B, so
B_t @ A equals the target's rows of up @ down exactly, for dense (trained) and
block-diagonal lora_ups alike. The row split is the targets' output widths at the model's
width (inner = heads * head_dim, MLP hidden = inner * mlp_ratio); a lora_up whose rows do
not add up to it is refused, naming the module. A target's rank columns whose lora_B
column is entirely zero are left out (they add nothing to the delta), so a block-diagonal
lora_up converts back to each target's own rank; a target whose rows are all zero is left
out altogether.

`from_diffusers` writes the kohya, OneTrainer or ComfyUI twin of a diffusers/PEFT LoRA,
building fused modules block-diagonally, for tests and demo files.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("kohya", "onetrainer", "comfyui")

# What follows a module name in a key: the parts of a LoRA pair (either naming) and alpha.
_PARTS = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_A.weight": "down",
    "lora_B.weight": "up",
    "alpha": "alpha",
}
# Bias deltas next to a LoRA pair: the pair is still a correct weight delta without them,
# so it applies and only these keys are reported dropped.
_BIAS_PARTS = ("diff_b", "lora_B.bias", "lora_up.bias")
# Where an unrecognised key's module name ends, so it is reported as one group.
_EXTRA_MARK = re.compile(r"\.(lora_|hada_|lokr_|dora_scale|diff|alpha|set_weight|reshape_weight)")

_CLIP_LINEARS = {
    "self_attn_q_proj": "self_attn.q_proj",
    "self_attn_k_proj": "self_attn.k_proj",
    "self_attn_v_proj": "self_attn.v_proj",
    "self_attn_out_proj": "self_attn.out_proj",
    "mlp_fc1": "mlp.fc1",
    "mlp_fc2": "mlp.fc2",
}
_CLIP_UNDERSCORED = re.compile(rf"^text_model_encoder_layers_(\d+)_({'|'.join(_CLIP_LINEARS)})$")
_CLIP_DOTTED = re.compile(
    rf"^text_model\.encoder\.layers\.\d+\.({'|'.join(map(re.escape, _CLIP_LINEARS.values()))})$"
)
# Text encoders farm does not convert (T5-XXL and any third): their groups are dropped.
_OTHER_TE = ("lora_te2_", "lora_te3_", "text_encoder_2.", "text_encoder_3.", "text_encoders.")
_COMFY_CLIP = "text_encoders.clip_l.transformer."


class Layers:
    """A transformer's layers a LoRA may adapt, for `to_diffusers` and `from_diffusers`:
    every linear module in diffusers' names with its (in, out) features, and the names
    the model's original code gives them (kohya and ComfyUI files use those), each with
    its diffusers targets (several where the original fuses them, q, k and v in one) and
    whether lora_up's halves swap. Subclasses are frozen dataclasses (hashable: the
    converter caches its tables per model)."""

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        raise NotImplementedError

    def native_table(self) -> dict[str, tuple[tuple[str, ...], bool]]:
        return {}

    def module_names(self) -> frozenset[str]:
        """The diffusers module names a LoRA can target in this transformer."""
        return frozenset(_shapes(self))


@dataclass(frozen=True)
class Widths(Layers):
    """A Flux.1 or Chroma transformer's shape, from its diffusers config.

    `family` is "flux" or "chroma". Everything a LoRA's shapes are checked against is
    derived from these fields: no width is assumed.
    """

    family: str
    num_layers: int
    num_single_layers: int
    num_attention_heads: int
    attention_head_dim: int
    mlp_ratio: float = 4.0
    in_channels: int = 64
    out_channels: int = 64
    patch_size: int = 1
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768  # Flux.1 only
    guidance_embeds: bool = False  # Flux.1 only
    approximator_num_channels: int = 64  # Chroma only
    approximator_hidden_dim: int = 5120  # Chroma only
    approximator_layers: int = 5  # Chroma only

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Widths:
        """From a FluxTransformer2DModel or ChromaTransformer2DModel config dict.

        Chroma is told by its class name or its `approximator_*` keys; missing keys take
        diffusers' defaults for the class.
        """
        chroma = str(config.get("_class_name", "")).startswith("Chroma") or any(
            k.startswith("approximator_") for k in config
        )
        d = {
            "num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24,
            "attention_head_dim": 128, "in_channels": 64, "patch_size": 1,
            "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": False,
            "approximator_num_channels": 64, "approximator_hidden_dim": 5120,
            "approximator_layers": 5,
        }  # fmt: skip
        d |= {k: config[k] for k in d if config.get(k) is not None}
        out_channels = config.get("out_channels") or d["in_channels"]
        return cls(family="chroma" if chroma else "flux", out_channels=int(out_channels), **d)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """Every linear module of the diffusers transformer: name → (in, out) features."""
        return dict(_module_shapes(self))

    def native_table(self) -> dict[str, tuple[tuple[str, ...], bool]]:
        return _bfl_table(self)


@dataclass(frozen=True)
class Converted:
    """A LoRA in diffusers/PEFT names, and what of the source did not convert.

    `applied` and `dropped` name source key groups (a key without its `.lora_down.weight`,
    `.lora_A.weight`, `.alpha`, … suffix). A group in `dropped` has no module in the
    model (or is not a plain LoRA pair); `name.diff_b` (or `.lora_B.bias`) names a bias
    delta left out next to a pair that did apply.
    """

    tensors: dict[str, np.ndarray]
    applied: list[str]
    dropped: list[str]
    layouts: tuple[str, ...]  # those seen: "peft", "kohya", "onetrainer", "comfyui", "bfl"


@dataclass(frozen=True)
class _Route:
    layout: str
    targets: tuple[str, ...]  # full output module names, "transformer.…" / "text_encoder.…"
    swap: bool = False  # BFL's final adaLN is (shift, scale); diffusers' norm_out is the reverse
    peft: bool = False  # a diffusers-named group: its alpha may come from the caller


def to_diffusers(
    tensors: Mapping[str, np.ndarray],
    widths: Layers,
    *,
    alphas: float | Mapping[str, float] | None = None,
    module_names: Collection[str] | None = None,
    text_encoder_modules: Collection[str] | None = None,
) -> Converted:
    """Convert a Flux.1/Chroma LoRA state dict in any accepted layout to diffusers/PEFT names.

    `alphas` applies to diffusers-named groups without an `.alpha` tensor: one lora_alpha
    for all, or a mapping from the group's name as in the file (`transformer.x_embedder`)
    to its alpha; without it they keep scale 1. `module_names` overrides the transformer
    modules the LoRA may target (default: `widths.module_names()`). `text_encoder_modules`
    are the CLIP-L module names to resolve text-encoder groups against, as the loaded
    model names them (with or without transformers' `text_model.` level); without it,
    CLIP-L's attention and MLP linears are emitted as `text_encoder.text_model.…`.

    Raises ValueError for a group whose shapes do not fit the model: a fused lora_up
    whose rows are not the sum of its targets' widths, or a factor whose width differs
    from its module's.
    """
    names = frozenset(module_names) if module_names is not None else widths.module_names()
    maps = _maps(widths, names)
    te = _te_maps(frozenset(text_encoder_modules)) if text_encoder_modules is not None else None
    shapes = _shapes(widths)

    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        group, part = _split_key(key)
        if part in groups.setdefault(group, {}):
            raise ValueError(f"{group}: two keys give its {part} (lora_A/down, lora_B/up)")
        groups[group][part] = value

    out: dict[str, np.ndarray] = {}
    source_of: dict[str, str] = {}
    applied: list[str] = []
    dropped: list[str] = []
    layouts: set[str] = set()
    for group in sorted(groups):
        parts = groups[group]
        route = _route(group, maps, te)
        pair = {"down", "up"} <= parts.keys()
        extras = [p for p in parts if p not in ("down", "up", "alpha")]
        if route is None or not pair or any(p not in _BIAS_PARTS for p in extras):
            dropped.append(group)
            continue
        dropped += [f"{group}.{p}" for p in extras]
        alpha = _alpha(group, parts, route, alphas)
        for name, (a, b) in _convert(group, parts, alpha, route, shapes).items():
            if name in source_of:
                raise ValueError(f"{group} and {source_of[name]} both convert to {name}")
            source_of[name] = group
            out[f"{name}.lora_A.weight"] = a
            out[f"{name}.lora_B.weight"] = b
        applied.append(group)
        layouts.add(route.layout)
    return Converted(out, applied, dropped, tuple(sorted(layouts)))


def from_diffusers(
    peft_tensors: Mapping[str, np.ndarray],
    layout: str,
    widths: Layers,
    alpha: float | None = None,
    fuse: bool = True,
) -> dict[str, np.ndarray]:
    """The kohya, OneTrainer or ComfyUI twin of a diffusers/PEFT LoRA (alpha/rank = 1 in it).

    Each module is stored with `alpha` (default: its rank) and its lora_B divided by
    alpha/rank, which must be a power of two so that folding it back is exact. kohya and
    ComfyUI fuse q/k/v (and a single block's proj_mlp) block-diagonally: lora_down is the
    targets' lora_A stacked along the rank, lora_up has each target's lora_B in its own rows
    and rank columns, and the fused alpha keeps the targets' alpha/rank (targets of unequal
    rank: alpha = fused rank, lora_B unscaled). Output is float32.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in peft_tensors.items():
        module, kind = key.rsplit(".lora_", 1)
        if kind not in ("A.weight", "B.weight"):
            raise ValueError(f"{key}: not a PEFT lora_A/lora_B weight")
        pairs.setdefault(module, {})[kind[0]] = np.asarray(value, dtype=np.float32)

    out: dict[str, np.ndarray] = {}
    bfl = _maps(widths, widths.module_names()).bfl_targets
    shapes = _shapes(widths)
    done: set[str] = set()
    if layout != "onetrainer" and fuse:
        for source, route in bfl.items():
            present = [t for t in route.targets if t in pairs]
            if not present:
                continue
            dims = [shapes[t.removeprefix("transformer.")][1] for t in route.targets]
            down, up, stored = _fuse(route.targets, dims, pairs, alpha)
            if route.swap:
                up = _swap_halves(up)
            _put(out, layout, _bfl_key(layout, source), down, up, stored)
            done.update(present)
    for module in sorted(pairs.keys() - done):
        a, b = pairs[module]["A"], pairs[module]["B"]
        stored, scale = _stored_alpha(module, a.shape[0], alpha)
        b = b / scale
        component, rest = module.split(".", 1)
        if component == "text_encoder":
            canonical = rest if rest.startswith("text_model.") else f"text_model.{rest}"
            if layout == "comfyui":
                name = _COMFY_CLIP + canonical
            else:
                name = "lora_te1_" + canonical.replace(".", "_")
        elif component == "transformer" and layout == "onetrainer":
            name = "lora_transformer_" + rest.replace(".", "_")
        elif component == "transformer":
            name = _bfl_key(layout, rest)  # a layer the original names as diffusers does
        else:
            raise ValueError(f"{module}: no {layout} name for this module")
        _put(out, layout, name, a, b, stored)
    return out


@functools.cache
def _shapes(layers: Layers) -> dict[str, tuple[int, int]]:
    return layers.module_shapes()


@functools.cache
def _module_shapes(w: Widths) -> dict[str, tuple[int, int]]:
    inner, mlp = w.inner_dim, w.mlp_hidden_dim
    shapes: dict[str, tuple[int, int]] = {
        "x_embedder": (w.in_channels, inner),
        "context_embedder": (w.joint_attention_dim, inner),
        "proj_out": (inner, w.patch_size * w.patch_size * w.out_channels),
    }
    if w.family == "chroma":
        hidden = w.approximator_hidden_dim
        shapes["distilled_guidance_layer.in_proj"] = (w.approximator_num_channels, hidden)
        for i in range(w.approximator_layers):
            shapes[f"distilled_guidance_layer.layers.{i}.linear_1"] = (hidden, hidden)
            shapes[f"distilled_guidance_layer.layers.{i}.linear_2"] = (hidden, hidden)
        shapes["distilled_guidance_layer.out_proj"] = (hidden, inner)
    else:
        embedders = {"timestep_embedder": 256, "text_embedder": w.pooled_projection_dim}
        if w.guidance_embeds:
            embedders["guidance_embedder"] = 256
        for name, width in embedders.items():
            shapes[f"time_text_embed.{name}.linear_1"] = (width, inner)
            shapes[f"time_text_embed.{name}.linear_2"] = (inner, inner)
        shapes["norm_out.linear"] = (inner, 2 * inner)
    for i in range(w.num_layers):
        p = f"transformer_blocks.{i}"
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            shapes[f"{p}.attn.{name}"] = (inner, inner)
        shapes[f"{p}.attn.to_out.0"] = (inner, inner)
        shapes[f"{p}.attn.to_add_out"] = (inner, inner)
        for ff in ("ff", "ff_context"):
            # FeedForward's own multiplier (4), not the single blocks' mlp_ratio.
            shapes[f"{p}.{ff}.net.0.proj"] = (inner, 4 * inner)
            shapes[f"{p}.{ff}.net.2"] = (4 * inner, inner)
        if w.family == "flux":
            shapes[f"{p}.norm1.linear"] = (inner, 6 * inner)
            shapes[f"{p}.norm1_context.linear"] = (inner, 6 * inner)
    for i in range(w.num_single_layers):
        p = f"single_transformer_blocks.{i}"
        for name in ("to_q", "to_k", "to_v"):
            shapes[f"{p}.attn.{name}"] = (inner, inner)
        shapes[f"{p}.proj_mlp"] = (inner, mlp)
        shapes[f"{p}.proj_out"] = (inner + mlp, inner)
        if w.family == "flux":
            shapes[f"{p}.norm.linear"] = (inner, 3 * inner)
    return shapes


def _bfl_table(w: Widths) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Original (BFL) module name → its diffusers targets, and whether B's halves swap.

    Both families' names are listed; a name whose targets the model lacks is dropped.
    """
    t: dict[str, tuple[tuple[str, ...], bool]] = {
        "img_in": (("x_embedder",), False),
        "txt_in": (("context_embedder",), False),
        "final_layer.linear": (("proj_out",), False),
        "final_layer.adaLN_modulation.1": (("norm_out.linear",), True),
        "distilled_guidance_layer.in_proj": (("distilled_guidance_layer.in_proj",), False),
        "distilled_guidance_layer.out_proj": (("distilled_guidance_layer.out_proj",), False),
    }
    for src, dst in (("time_in", "timestep"), ("vector_in", "text"), ("guidance_in", "guidance")):
        t[f"{src}.in_layer"] = ((f"time_text_embed.{dst}_embedder.linear_1",), False)
        t[f"{src}.out_layer"] = ((f"time_text_embed.{dst}_embedder.linear_2",), False)
    for i in range(w.approximator_layers):
        p = f"distilled_guidance_layer.layers.{i}"
        t[f"{p}.in_layer"] = ((f"{p}.linear_1",), False)
        t[f"{p}.out_layer"] = ((f"{p}.linear_2",), False)
    for i in range(w.num_layers):
        s, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        t[f"{s}.img_attn.qkv"] = ((f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"), False)
        t[f"{s}.txt_attn.qkv"] = (
            (f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"),
            False,
        )
        t[f"{s}.img_attn.proj"] = ((f"{d}.attn.to_out.0",), False)
        t[f"{s}.txt_attn.proj"] = ((f"{d}.attn.to_add_out",), False)
        for side, ff, norm in (("img", "ff", "norm1"), ("txt", "ff_context", "norm1_context")):
            t[f"{s}.{side}_mlp.0"] = ((f"{d}.{ff}.net.0.proj",), False)
            t[f"{s}.{side}_mlp.2"] = ((f"{d}.{ff}.net.2",), False)
            t[f"{s}.{side}_mod.lin"] = ((f"{d}.{norm}.linear",), False)
    for i in range(w.num_single_layers):
        s, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        qkv = (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")
        t[f"{s}.linear1"] = (qkv, False)
        t[f"{s}.linear2"] = ((f"{d}.proj_out",), False)
        t[f"{s}.modulation.lin"] = ((f"{d}.norm.linear",), False)
    return t


@dataclass(frozen=True)
class _Maps:
    bfl_targets: dict[str, _Route]  # dotted BFL name → route (only those the model has)
    bfl_names: frozenset[str]  # every BFL name, present in the model or not
    kohya: dict[str, str]  # "lora_unet_" + underscored BFL name → dotted BFL name
    underscored: dict[str, str]  # underscored diffusers module name → dotted
    modules: frozenset[str]


@functools.lru_cache(maxsize=8)
def _maps(w: Layers, modules: frozenset[str]) -> _Maps:
    table = w.native_table()
    bfl_targets = {
        name: _Route("bfl", tuple(f"transformer.{x}" for x in targets), swap)
        for name, (targets, swap) in table.items()
        if all(x in modules for x in targets)
    }
    kohya = _underscore_map(table, "lora_unet_")
    underscored = _underscore_map(modules, "")
    return _Maps(bfl_targets, frozenset(table), kohya, underscored, modules)


def _underscore_map(names: Collection[str], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        key = prefix + name.replace(".", "_")
        if out.setdefault(key, name) != name:
            raise ValueError(f"module names {out[key]} and {name} are both {key} with underscores")
    return out


@functools.lru_cache(maxsize=8)
def _te_maps(modules: frozenset[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(canonical dotted → as named, canonical underscored → as named) for CLIP-L modules."""
    dotted = {(n if n.startswith("text_model.") else f"text_model.{n}"): n for n in modules}
    return dotted, {k.replace(".", "_"): v for k, v in dotted.items()}


def group_of(key: str) -> str:
    """The key group (one adapted layer of the file) a key belongs to."""
    return _split_key(key)[0]


def _split_key(key: str) -> tuple[str, str]:
    for suffix, part in _PARTS.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part
    m = _EXTRA_MARK.search(key)
    if m:
        return key[: m.start()], key[m.start() + 1 :]
    group, _, part = key.rpartition(".")
    return (group, part) if group else (key, "")


def _route(group: str, maps: _Maps, te: tuple[dict, dict] | None) -> _Route | None:
    if group.startswith(_OTHER_TE):
        if group.startswith(_COMFY_CLIP):
            return _te_route("comfyui", _te_dotted(group.removeprefix(_COMFY_CLIP), te), False)
        return None
    if group.startswith("lora_unet_"):
        bfl = maps.kohya.get(group)
        if bfl is not None:
            return _bfl_route("kohya", bfl, maps)
        return _module_route("kohya", maps.underscored.get(group.removeprefix("lora_unet_")))
    if group.startswith("lora_transformer_"):
        name = maps.underscored.get(group.removeprefix("lora_transformer_"))
        return _module_route("onetrainer", name)
    for prefix in ("lora_te1_", "lora_te_"):
        if group.startswith(prefix):
            return _te_route("kohya", _te_underscored(group.removeprefix(prefix), te), False)
    if group.startswith("diffusion_model."):
        rest = group.removeprefix("diffusion_model.")
        if rest in maps.bfl_names:
            return _bfl_route("comfyui", rest, maps)
        return _module_route("comfyui", rest if rest in maps.modules else None)
    if group.startswith("transformer."):
        name = group.removeprefix("transformer.")
        return _module_route("peft", name if name in maps.modules else None, peft=True)
    if group.startswith("text_encoder."):
        return _te_route("peft", _te_dotted(group.removeprefix("text_encoder."), te), True)
    if group in maps.bfl_names:
        return _bfl_route("bfl", group, maps)
    return _module_route("peft", group if group in maps.modules else None, peft=True)


def _bfl_route(layout: str, name: str, maps: _Maps) -> _Route | None:
    route = maps.bfl_targets.get(name)
    return None if route is None else _Route(layout, route.targets, route.swap)


def _module_route(layout: str, name: str | None, peft: bool = False) -> _Route | None:
    return None if name is None else _Route(layout, (f"transformer.{name}",), peft=peft)


def _te_route(layout: str, name: str | None, peft: bool) -> _Route | None:
    return None if name is None else _Route(layout, (f"text_encoder.{name}",), peft=peft)


def _te_dotted(name: str, te: tuple[dict, dict] | None) -> str | None:
    canonical = name if name.startswith("text_model.") else f"text_model.{name}"
    if te is not None:
        return te[0].get(canonical)
    return canonical if _CLIP_DOTTED.match(canonical) else None


def _te_underscored(name: str, te: tuple[dict, dict] | None) -> str | None:
    canonical = name if name.startswith("text_model_") else f"text_model_{name}"
    if te is not None:
        return te[1].get(canonical)
    m = _CLIP_UNDERSCORED.match(canonical)
    return f"text_model.encoder.layers.{m[1]}.{_CLIP_LINEARS[m[2]]}" if m else None


def _alpha(
    group: str,
    parts: dict[str, np.ndarray],
    route: _Route,
    alphas: float | Mapping[str, float] | None,
) -> float | None:
    if "alpha" in parts:
        value = np.asarray(parts["alpha"])
        if value.size != 1:
            raise ValueError(f"{group}.alpha: expected a scalar, got shape {value.shape}")
        return float(value.reshape(()))
    if route.peft and alphas is not None:
        return alphas.get(group) if isinstance(alphas, Mapping) else float(alphas)
    return None


def _convert(
    group: str,
    parts: dict[str, np.ndarray],
    alpha: float | None,
    route: _Route,
    shapes: dict[str, tuple[int, int]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    down = np.asarray(parts["down"], dtype=np.float32)
    up = np.asarray(parts["up"], dtype=np.float32)
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        raise ValueError(
            f"{group}: lora_down {down.shape} and lora_up {up.shape} are not a linear LoRA pair"
        )
    rank = down.shape[0]
    if alpha is not None and alpha != rank:
        # In float32: every fp16 value times a power of two is exact there, so a kohya
        # file whose alpha/rank is a power of two converts with exactly its deltas.
        up = up * np.float32(alpha / rank)
    fused = len(route.targets) > 1
    if fused:
        dims = [_shape(t, shapes, group)[1] for t in route.targets]
        if up.shape[0] != sum(dims):
            names = ", ".join(t.rsplit(".", 1)[-1] for t in route.targets)
            raise ValueError(
                f"{group}: fused lora_up has shape {up.shape} (lora_down {down.shape}), but "
                f"this model's {names} need {' + '.join(map(str, dims))} = {sum(dims)} rows"
            )
    else:
        dims = [up.shape[0]]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    start = 0
    for target, rows in zip(route.targets, dims, strict=True):
        a, b = down, up[start : start + rows]
        start += rows
        if fused:
            keep = np.flatnonzero(np.any(b != 0, axis=0))
            if keep.size == 0:
                continue  # this target's delta is exactly zero
            # Each target owns its factors: a caller may save or edit them one by one.
            a, b = (down[keep], b[:, keep]) if keep.size < rank else (down.copy(), b)
        if route.swap:
            b = _swap_halves(b)
        # CLIP-L's widths are not in the transformer's config: its shapes go unchecked here.
        component, module = target.split(".", 1)
        known = shapes.get(module) if component == "transformer" else None
        if known is not None:
            n_in, n_out = known
            if a.shape[1] != n_in or b.shape[0] != n_out:
                raise ValueError(
                    f"{group}: {target} is {n_in} → {n_out} in this model, but the LoRA "
                    f"gives lora_A {a.shape} and lora_B {b.shape}"
                )
        out[target] = (np.ascontiguousarray(a), np.ascontiguousarray(b))
    return out


def _shape(target: str, shapes: dict[str, tuple[int, int]], group: str) -> tuple[int, int]:
    try:
        return shapes[target.removeprefix("transformer.")]
    except KeyError:
        raise ValueError(f"{group}: {target} has no known width in this model") from None


def _swap_halves(b: np.ndarray) -> np.ndarray:
    if b.shape[0] % 2:
        raise ValueError(f"final adaLN lora_up has an odd number of rows: {b.shape}")
    half = b.shape[0] // 2
    return np.concatenate([b[half:], b[:half]])


def _stored_alpha(module: str, rank: int, alpha: float | None) -> tuple[float, np.float32]:
    """(alpha to store, alpha/rank to divide lora_B by), checked to fold back exactly."""
    if alpha is None:
        return float(rank), np.float32(1)
    scale = alpha / rank
    if scale <= 0 or math.frexp(scale)[0] != 0.5:
        raise ValueError(f"{module}: alpha {alpha:g} / rank {rank} is not a power of two")
    return float(alpha), np.float32(scale)


def _fuse(
    targets: tuple[str, ...],
    dims: list[int],
    pairs: dict[str, dict[str, np.ndarray]],
    alpha: float | None,
) -> tuple[np.ndarray, np.ndarray, float]:
    present = [t for t in targets if t in pairs]
    ranks = [pairs[t]["A"].shape[0] for t in present]
    fused_rank = sum(ranks)
    if alpha is not None and len(set(ranks)) == 1:
        _, scale = _stored_alpha(present[0], ranks[0], alpha)
        stored = alpha * fused_rank / ranks[0]
    else:
        stored, scale = float(fused_rank), np.float32(1)
    down = np.concatenate([pairs[t]["A"] for t in present])
    up = np.zeros((sum(dims), fused_rank), dtype=np.float32)
    row = col = 0
    for target, rows in zip(targets, dims, strict=True):
        if target in pairs:
            b = pairs[target]["B"]
            if b.shape[0] != rows:
                raise ValueError(f"{target}: lora_B {b.shape} does not have {rows} rows")
            up[row : row + rows, col : col + b.shape[1]] = b / scale
            col += b.shape[1]
        row += rows
    return down, up, stored


def _bfl_key(layout: str, name: str) -> str:
    if layout == "comfyui":
        return f"diffusion_model.{name}"
    return "lora_unet_" + name.replace(".", "_")


def _put(out: dict, layout: str, name: str, a: np.ndarray, b: np.ndarray, alpha: float) -> None:
    down, up = ("lora_A", "lora_B") if layout == "comfyui" else ("lora_down", "lora_up")
    out[f"{name}.{down}.weight"] = np.ascontiguousarray(a, dtype=np.float32)
    out[f"{name}.{up}.weight"] = np.ascontiguousarray(b, dtype=np.float32)
    out[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
