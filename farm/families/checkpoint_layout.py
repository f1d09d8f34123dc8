"""The original single-file layout of a model, tensor by tensor, from its diffusers configs.

A1111, Forge and ComfyUI load a base model as one `.safetensors` file in the layout its
authors' code saved: CompVis/Stability's `ldm`/`sgm` modules for SD1.x, SD2.x and SDXL
(`model.diffusion_model.input_blocks.1.0.in_layers.2.weight`), Black Forest Labs' for a
Flux.1 or Chroma transformer (`double_blocks.0.img_attn.qkv.weight`). `sd_layout` and
`flux_layout` list every tensor of that layout for a model of the given configs: its key,
its shape, and the diffusers tensors it is made of. Planning compares a file's header with
this list (a missing key or a wrong shape is refused before anything loads), the Flux
loader converts with it at the model's own widths, and the test suite's writer builds
files with it. No torch here: only names and shapes.

Where the original layout differs from diffusers' beyond names:
- a UNet level's upsampler sits after its ResBlock, or after its ResBlock and attention:
  `output_blocks.{i}.1.conv` or `output_blocks.{i}.2.conv`;
- the VAE's mid-block attention weights are 1×1 convolutions (`[C, C, 1, 1]`);
- CLIP text encoders keep transformers' `text_model.` level (`cond_stage_model.transformer.
  text_model.…`); OpenCLIP's (SD2.x, SDXL's second) fuse q, k and v into `in_proj_weight`,
  keep `text_projection` as [width, projection] (diffusers' transposed), and SD2.x's holds
  one more layer than diffusers loads (it reads the penultimate layer's output);
- Flux fuses q, k, v (and in single blocks the MLP input) into one linear, and its final
  adaLN modulation is (shift, scale) where diffusers has (scale, shift).
"""

from __future__ import annotations

from dataclasses import dataclass

# How a tensor of the file is made from diffusers tensors (in `sources` order):
# "copy": the one source as is; "conv": a linear's [out, in] weight as a [out, in, 1, 1]
# convolution; "cat": sources stacked along dim 0; "t": the one source transposed;
# "swap": the one source with its two halves (dim 0) swapped; "extra": a tensor the
# original layout holds that diffusers never loads (no source).
HOWS = ("copy", "conv", "cat", "t", "swap", "extra")

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer."
SD2_CLIP = "cond_stage_model.model."
SDXL_CLIP = "conditioner.embedders.0.transformer."
SDXL_CLIP2 = "conditioner.embedders.1.model."


@dataclass(frozen=True)
class Tensor:
    """One tensor of the original layout."""

    key: str
    shape: tuple[int, ...]
    component: str  # the diffusers component its sources belong to ("unet", "vae", …)
    sources: tuple[str, ...] = ()  # keys of that component's diffusers state dict
    how: str = "copy"
    parts: tuple[int, ...] = ()  # "cat": each source's size along dim 0

    @property
    def needed(self) -> bool:
        """Whether diffusers reads it: a file without it cannot load."""
        return self.how != "extra"


class _Table:
    def __init__(self) -> None:
        self.tensors: list[Tensor] = []

    def add(self, key: str, shape: tuple[int, ...], component: str,
            sources: tuple[str, ...] | str = (), how: str = "copy",
            parts: tuple[int, ...] = ()) -> None:  # fmt: skip
        if isinstance(sources, str):
            sources = (sources,)
        self.tensors.append(Tensor(key, tuple(shape), component, sources, how, parts))

    def pair(self, key: str, shape: tuple[int, ...], component: str, source: str,
             how: str = "copy") -> None:  # fmt: skip
        """`key.weight` and `key.bias` from `source.weight` and `source.bias`."""
        self.add(f"{key}.weight", shape, component, f"{source}.weight", how)
        self.add(f"{key}.bias", (shape[0],), component, f"{source}.bias")


# ------------------------------------------------------------------ SD1.x, SD2.x, SDXL


def sd_layout(unet: dict, vae: dict, text: dict, text_2: dict | None = None,
              open_clip: bool = False) -> list[Tensor]:  # fmt: skip
    """Every tensor of an SD1.x (`text` is CLIP), SD2.x (`open_clip`: `text` is OpenCLIP)
    or SDXL (`text` CLIP, `text_2` OpenCLIP) checkpoint of these diffusers configs."""
    t = _Table()
    _unet(t, unet)
    _vae(t, vae)
    if text_2 is not None:
        _clip(t, text, SDXL_CLIP, "text_encoder")
        _open_clip(t, text_2, SDXL_CLIP2, "text_encoder_2", projection=True, extra_layers=0)
    elif open_clip:
        # SD2.x reads OpenCLIP's penultimate layer: diffusers' config drops the last one,
        # which the original file still holds, with the projection it never uses.
        _open_clip(t, text, SD2_CLIP, "text_encoder", projection=False, extra_layers=1)
    else:
        _clip(t, text, SD1_CLIP, "text_encoder")
    return t.tensors


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, list | tuple) else [value] * levels


def _unet(t: _Table, c: dict) -> None:
    u = "unet"
    channels = list(c["block_out_channels"])
    levels = len(channels)
    per_block = _per_level(c.get("layers_per_block", 2), levels)
    depth = _per_level(c.get("transformer_layers_per_block", 1) or 1, levels)
    context = _per_level(c.get("cross_attention_dim", 1280), levels)
    linear = bool(c.get("use_linear_projection", False))
    down_attn = ["CrossAttn" in b for b in c["down_block_types"]]
    up_attn = ["CrossAttn" in b for b in c["up_block_types"]]
    c0 = channels[0]
    temb = c.get("time_embedding_dim") or 4 * c0
    t.pair(f"{UNET}time_embed.0", (temb, c0), u, "time_embedding.linear_1")
    t.pair(f"{UNET}time_embed.2", (temb, temb), u, "time_embedding.linear_2")
    if c.get("addition_embed_type") == "text_time":
        width = c["projection_class_embeddings_input_dim"]
        t.pair(f"{UNET}label_emb.0.0", (temb, width), u, "add_embedding.linear_1")
        t.pair(f"{UNET}label_emb.0.2", (temb, temb), u, "add_embedding.linear_2")
    t.pair(f"{UNET}input_blocks.0.0", (c0, c.get("in_channels", 4), 3, 3), u, "conv_in")
    skips, ch, i = [c0], c0, 1
    for level, width in enumerate(channels):
        for j in range(per_block[level]):
            here = f"{UNET}input_blocks.{i}"
            _resblock(t, f"{here}.0", f"down_blocks.{level}.resnets.{j}", ch, width, temb)
            if down_attn[level]:
                _transformer(t, f"{here}.1", f"down_blocks.{level}.attentions.{j}", width,
                             depth[level], context[level], linear)  # fmt: skip
            ch = width
            skips.append(ch)
            i += 1
        if level < levels - 1:
            t.pair(f"{UNET}input_blocks.{i}.0.op", (ch, ch, 3, 3), u,
                   f"down_blocks.{level}.downsamplers.0.conv")  # fmt: skip
            skips.append(ch)
            i += 1
    _resblock(t, f"{UNET}middle_block.0", "mid_block.resnets.0", ch, ch, temb)
    _transformer(t, f"{UNET}middle_block.1", "mid_block.attentions.0", ch, depth[-1],
                 context[-1], linear)  # fmt: skip
    _resblock(t, f"{UNET}middle_block.2", "mid_block.resnets.1", ch, ch, temb)
    i = 0
    for up, level in enumerate(reversed(range(levels))):
        width = channels[level]
        for j in range(per_block[level] + 1):
            here = f"{UNET}output_blocks.{i}"
            _resblock(t, f"{here}.0", f"up_blocks.{up}.resnets.{j}", ch + skips.pop(), width,
                      temb)  # fmt: skip
            if up_attn[up]:
                _transformer(t, f"{here}.1", f"up_blocks.{up}.attentions.{j}", width,
                             depth[level], context[level], linear)  # fmt: skip
            ch = width
            if level > 0 and j == per_block[level]:
                # After the ResBlock, or after the ResBlock and its attention.
                slot = 2 if up_attn[up] else 1
                t.pair(f"{here}.{slot}.conv", (ch, ch, 3, 3), u,
                       f"up_blocks.{up}.upsamplers.0.conv")  # fmt: skip
            i += 1
    t.pair(f"{UNET}out.0", (c0,), u, "conv_norm_out")
    t.pair(f"{UNET}out.2", (c.get("out_channels", 4), c0, 3, 3), u, "conv_out")


def _resblock(t: _Table, key: str, src: str, cin: int, cout: int, temb: int) -> None:
    u = "unet"
    t.pair(f"{key}.in_layers.0", (cin,), u, f"{src}.norm1")
    t.pair(f"{key}.in_layers.2", (cout, cin, 3, 3), u, f"{src}.conv1")
    t.pair(f"{key}.emb_layers.1", (cout, temb), u, f"{src}.time_emb_proj")
    t.pair(f"{key}.out_layers.0", (cout,), u, f"{src}.norm2")
    t.pair(f"{key}.out_layers.3", (cout, cout, 3, 3), u, f"{src}.conv2")
    if cin != cout:
        t.pair(f"{key}.skip_connection", (cout, cin, 1, 1), u, f"{src}.conv_shortcut")


def _transformer(t: _Table, key: str, src: str, width: int, depth: int, context: int,
                 linear: bool) -> None:  # fmt: skip
    u = "unet"
    # A 1×1 convolution in both layouts, unless the model projects with linears (SD2.x, SDXL).
    proj = (width, width) if linear else (width, width, 1, 1)
    t.pair(f"{key}.norm", (width,), u, f"{src}.norm")
    t.pair(f"{key}.proj_in", proj, u, f"{src}.proj_in")
    for d in range(depth):
        k, s = f"{key}.transformer_blocks.{d}", f"{src}.transformer_blocks.{d}"
        for attn, kv in (("attn1", width), ("attn2", context)):
            t.add(f"{k}.{attn}.to_q.weight", (width, width), u, f"{s}.{attn}.to_q.weight")
            t.add(f"{k}.{attn}.to_k.weight", (width, kv), u, f"{s}.{attn}.to_k.weight")
            t.add(f"{k}.{attn}.to_v.weight", (width, kv), u, f"{s}.{attn}.to_v.weight")
            t.pair(f"{k}.{attn}.to_out.0", (width, width), u, f"{s}.{attn}.to_out.0")
        t.pair(f"{k}.ff.net.0.proj", (8 * width, width), u, f"{s}.ff.net.0.proj")  # GEGLU
        t.pair(f"{k}.ff.net.2", (width, 4 * width), u, f"{s}.ff.net.2")
        for n in ("norm1", "norm2", "norm3"):
            t.pair(f"{k}.{n}", (width,), u, f"{s}.{n}")
    t.pair(f"{key}.proj_out", proj, u, f"{src}.proj_out")


def _vae(t: _Table, c: dict) -> None:
    v = "vae"
    channels = list(c["block_out_channels"])
    levels = len(channels)
    per_block = c.get("layers_per_block", 2)
    latent = c.get("latent_channels", 4)
    t.pair(f"{VAE}encoder.conv_in", (channels[0], c.get("in_channels", 3), 3, 3), v,
           "encoder.conv_in")  # fmt: skip
    ch = channels[0]
    for level, width in enumerate(channels):
        for j in range(per_block):
            _vae_resnet(t, f"{VAE}encoder.down.{level}.block.{j}",
                        f"encoder.down_blocks.{level}.resnets.{j}", ch, width)  # fmt: skip
            ch = width
        if level < levels - 1:
            t.pair(f"{VAE}encoder.down.{level}.downsample.conv", (ch, ch, 3, 3), v,
                   f"encoder.down_blocks.{level}.downsamplers.0.conv")  # fmt: skip
    _vae_mid(t, "encoder", ch, c)
    t.pair(f"{VAE}encoder.norm_out", (ch,), v, "encoder.conv_norm_out")
    t.pair(f"{VAE}encoder.conv_out", (2 * latent, ch, 3, 3), v, "encoder.conv_out")
    t.pair(f"{VAE}decoder.conv_in", (ch, latent, 3, 3), v, "decoder.conv_in")
    _vae_mid(t, "decoder", ch, c)
    for up, level in enumerate(reversed(range(levels))):
        width = channels[level]
        for j in range(per_block + 1):
            _vae_resnet(t, f"{VAE}decoder.up.{level}.block.{j}",
                        f"decoder.up_blocks.{up}.resnets.{j}", ch, width)  # fmt: skip
            ch = width
        if level > 0:
            t.pair(f"{VAE}decoder.up.{level}.upsample.conv", (ch, ch, 3, 3), v,
                   f"decoder.up_blocks.{up}.upsamplers.0.conv")  # fmt: skip
    t.pair(f"{VAE}decoder.norm_out", (ch,), v, "decoder.conv_norm_out")
    t.pair(f"{VAE}decoder.conv_out", (c.get("out_channels", 3), ch, 3, 3), v,
           "decoder.conv_out")  # fmt: skip
    if c.get("use_quant_conv", True):
        t.pair(f"{VAE}quant_conv", (2 * latent, 2 * latent, 1, 1), v, "quant_conv")
    if c.get("use_post_quant_conv", True):
        t.pair(f"{VAE}post_quant_conv", (latent, latent, 1, 1), v, "post_quant_conv")


def _vae_resnet(t: _Table, key: str, src: str, cin: int, cout: int) -> None:
    t.pair(f"{key}.norm1", (cin,), "vae", f"{src}.norm1")
    t.pair(f"{key}.conv1", (cout, cin, 3, 3), "vae", f"{src}.conv1")
    t.pair(f"{key}.norm2", (cout,), "vae", f"{src}.norm2")
    t.pair(f"{key}.conv2", (cout, cout, 3, 3), "vae", f"{src}.conv2")
    if cin != cout:
        t.pair(f"{key}.nin_shortcut", (cout, cin, 1, 1), "vae", f"{src}.conv_shortcut")


def _vae_mid(t: _Table, side: str, ch: int, c: dict) -> None:
    key, src = f"{VAE}{side}.mid", f"{side}.mid_block"
    _vae_resnet(t, f"{key}.block_1", f"{src}.resnets.0", ch, ch)
    if c.get("mid_block_add_attention", True):
        a = f"{src}.attentions.0"
        t.pair(f"{key}.attn_1.norm", (ch,), "vae", f"{a}.group_norm")
        for ours, theirs in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"),
                             ("proj_out", "to_out.0")):  # fmt: skip
            t.pair(f"{key}.attn_1.{ours}", (ch, ch, 1, 1), "vae", f"{a}.{theirs}", "conv")
    _vae_resnet(t, f"{key}.block_2", f"{src}.resnets.1", ch, ch)


def _clip(t: _Table, c: dict, prefix: str, component: str) -> None:
    """A transformers CLIPTextModel, under its `text_model.` level as the files keep it."""
    h, inner = c["hidden_size"], c["intermediate_size"]
    p = f"{prefix}text_model."
    t.add(f"{p}embeddings.token_embedding.weight", (c["vocab_size"], h), component,
          "text_model.embeddings.token_embedding.weight")  # fmt: skip
    t.add(f"{p}embeddings.position_embedding.weight", (c["max_position_embeddings"], h),
          component, "text_model.embeddings.position_embedding.weight")  # fmt: skip
    for i in range(c["num_hidden_layers"]):
        k = f"text_model.encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t.pair(f"{prefix}{k}.self_attn.{name}", (h, h), component, f"{k}.self_attn.{name}")
        t.pair(f"{prefix}{k}.layer_norm1", (h,), component, f"{k}.layer_norm1")
        t.pair(f"{prefix}{k}.mlp.fc1", (inner, h), component, f"{k}.mlp.fc1")
        t.pair(f"{prefix}{k}.mlp.fc2", (h, inner), component, f"{k}.mlp.fc2")
        t.pair(f"{prefix}{k}.layer_norm2", (h,), component, f"{k}.layer_norm2")
    t.pair(f"{p}final_layer_norm", (h,), component, "text_model.final_layer_norm")


def _open_clip(t: _Table, c: dict, prefix: str, component: str, projection: bool,
               extra_layers: int) -> None:  # fmt: skip
    """An OpenCLIP text tower (what SD2.x and SDXL's second encoder save)."""
    h, inner = c["hidden_size"], c["intermediate_size"]
    layers = c["num_hidden_layers"]
    t.add(f"{prefix}token_embedding.weight", (c["vocab_size"], h), component,
          "text_model.embeddings.token_embedding.weight")  # fmt: skip
    t.add(f"{prefix}positional_embedding", (c["max_position_embeddings"], h), component,
          "text_model.embeddings.position_embedding.weight")  # fmt: skip
    for i in range(layers + extra_layers):
        k, s = f"{prefix}transformer.resblocks.{i}", f"text_model.encoder.layers.{i}"
        # A layer past diffusers' last is kept in the file and read by no one.
        used = i < layers
        for ours, theirs, shape in (
            ("ln_1.weight", "layer_norm1.weight", (h,)), ("ln_1.bias", "layer_norm1.bias", (h,)),
            ("attn.out_proj.weight", "self_attn.out_proj.weight", (h, h)),
            ("attn.out_proj.bias", "self_attn.out_proj.bias", (h,)),
            ("ln_2.weight", "layer_norm2.weight", (h,)), ("ln_2.bias", "layer_norm2.bias", (h,)),
            ("mlp.c_fc.weight", "mlp.fc1.weight", (inner, h)),
            ("mlp.c_fc.bias", "mlp.fc1.bias", (inner,)),
            ("mlp.c_proj.weight", "mlp.fc2.weight", (h, inner)),
            ("mlp.c_proj.bias", "mlp.fc2.bias", (h,)),
        ):  # fmt: skip
            t.add(f"{k}.{ours}", shape, component, f"{s}.{theirs}" if used else (),
                  "copy" if used else "extra")  # fmt: skip
        for part, shape in (("weight", (3 * h, h)), ("bias", (3 * h,))):
            qkv = tuple(f"{s}.self_attn.{x}_proj.{part}" for x in "qkv")
            t.add(f"{k}.attn.in_proj_{part}", shape, component, qkv if used else (),
                  "cat" if used else "extra", (h, h, h) if used else ())  # fmt: skip
    t.add(f"{prefix}ln_final.weight", (h,), component, "text_model.final_layer_norm.weight")
    t.add(f"{prefix}ln_final.bias", (h,), component, "text_model.final_layer_norm.bias")
    if projection:
        t.add(f"{prefix}text_projection", (h, c["projection_dim"]), component,
              "text_projection.weight", "t")  # fmt: skip
    else:
        t.add(f"{prefix}text_projection", (h, h), component, (), "extra")
    t.add(f"{prefix}logit_scale", (), component, (), "extra")


# ------------------------------------------------------------------ Flux.1, Chroma


def flux_layout(config: dict) -> list[Tensor]:
    """Every tensor of a Flux.1 or Chroma transformer file (Black Forest Labs' names, no
    prefix) for this diffusers transformer config, at its own widths."""
    from farm.loras.flux_keys import Widths

    w = Widths.from_config(config)
    inner, mlp, head = w.inner_dim, w.mlp_hidden_dim, w.attention_head_dim
    t = _Table()
    c = "transformer"

    def linear(key: str, sources: tuple[str, ...], outs: tuple[int, ...], width: int,
               how: str | None = None) -> None:  # fmt: skip
        how = how or ("cat" if len(sources) > 1 else "copy")
        parts = outs if how == "cat" else ()
        t.add(f"{key}.weight", (sum(outs), width), c, tuple(f"{s}.weight" for s in sources), how,
              parts)  # fmt: skip
        t.add(f"{key}.bias", (sum(outs),), c, tuple(f"{s}.bias" for s in sources), how, parts)

    linear("img_in", ("x_embedder",), (inner,), w.in_channels * w.patch_size**2)
    linear("txt_in", ("context_embedder",), (inner,), w.joint_attention_dim)
    if w.family == "chroma":
        hidden = w.approximator_hidden_dim
        g = "distilled_guidance_layer"
        linear(f"{g}.in_proj", (f"{g}.in_proj",), (hidden,), w.approximator_num_channels)
        for i in range(w.approximator_layers):
            linear(f"{g}.layers.{i}.in_layer", (f"{g}.layers.{i}.linear_1",), (hidden,), hidden)
            linear(f"{g}.layers.{i}.out_layer", (f"{g}.layers.{i}.linear_2",), (hidden,), hidden)
            t.add(f"{g}.norms.{i}.scale", (hidden,), c, f"{g}.norms.{i}.weight")
        linear(f"{g}.out_proj", (f"{g}.out_proj",), (inner,), hidden)
    else:
        embedders = [("time_in", "timestep_embedder", 256),
                     ("vector_in", "text_embedder", w.pooled_projection_dim)]  # fmt: skip
        if w.guidance_embeds:
            embedders.append(("guidance_in", "guidance_embedder", 256))
        for ours, theirs, width in embedders:
            src = f"time_text_embed.{theirs}"
            linear(f"{ours}.in_layer", (f"{src}.linear_1",), (inner,), width)
            linear(f"{ours}.out_layer", (f"{src}.linear_2",), (inner,), inner)
    for i in range(w.num_layers):
        k, s = f"double_blocks.{i}", f"transformer_blocks.{i}"
        for side, qkv, out, ff, norm, (nq, nk) in (
            ("img", ("to_q", "to_k", "to_v"), "to_out.0", "ff", "norm1", ("norm_q", "norm_k")),
            ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"), "to_add_out", "ff_context",
             "norm1_context", ("norm_added_q", "norm_added_k")),
        ):  # fmt: skip
            if w.family == "flux":
                linear(f"{k}.{side}_mod.lin", (f"{s}.{norm}.linear",), (6 * inner,), inner)
            linear(f"{k}.{side}_attn.qkv", tuple(f"{s}.attn.{x}" for x in qkv), (inner,) * 3,
                   inner)  # fmt: skip
            t.add(f"{k}.{side}_attn.norm.query_norm.scale", (head,), c, f"{s}.attn.{nq}.weight")
            t.add(f"{k}.{side}_attn.norm.key_norm.scale", (head,), c, f"{s}.attn.{nk}.weight")
            linear(f"{k}.{side}_attn.proj", (f"{s}.attn.{out}",), (inner,), inner)
            linear(f"{k}.{side}_mlp.0", (f"{s}.{ff}.net.0.proj",), (4 * inner,), inner)
            linear(f"{k}.{side}_mlp.2", (f"{s}.{ff}.net.2",), (inner,), 4 * inner)
    for i in range(w.num_single_layers):
        k, s = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        linear(f"{k}.linear1", (f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v",
                                f"{s}.proj_mlp"), (inner, inner, inner, mlp), inner)  # fmt: skip
        linear(f"{k}.linear2", (f"{s}.proj_out",), (inner,), inner + mlp)
        t.add(f"{k}.norm.query_norm.scale", (head,), c, f"{s}.attn.norm_q.weight")
        t.add(f"{k}.norm.key_norm.scale", (head,), c, f"{s}.attn.norm_k.weight")
        if w.family == "flux":
            linear(f"{k}.modulation.lin", (f"{s}.norm.linear",), (3 * inner,), inner)
    linear("final_layer.linear", ("proj_out",), (w.patch_size**2 * w.out_channels,), inner)
    if w.family == "flux":
        # BFL's final adaLN gives (shift, scale); diffusers' norm_out takes (scale, shift).
        linear("final_layer.adaLN_modulation.1", ("norm_out.linear",), (2 * inner,), inner,
               "swap")  # fmt: skip
    return t.tensors
