"""Flux.1/Chroma LoRA layouts (farm.loras.flux_keys): every layout of the same weights
converts to the same per-module deltas B @ A, at any model width."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load, save

from farm.loras.flux_keys import Widths, from_diffusers, to_diffusers

FLUX = {
    "_class_name": "FluxTransformer2DModel", "num_layers": 1, "num_single_layers": 1,
    "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 32,
    "pooled_projection_dim": 32, "in_channels": 64, "axes_dims_rope": [2, 2, 4],
}  # fmt: skip
# Another width everywhere: 3 heads of 4, two blocks of each kind, a guidance embedder.
FLUX_WIDE = {
    "_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 2,
    "attention_head_dim": 4, "num_attention_heads": 3, "joint_attention_dim": 24,
    "pooled_projection_dim": 20, "in_channels": 16, "guidance_embeds": True,
    "axes_dims_rope": [2, 2, 0],
}  # fmt: skip
CHROMA = {
    "_class_name": "ChromaTransformer2DModel", "num_layers": 1, "num_single_layers": 1,
    "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 32,
    "in_channels": 64, "axes_dims_rope": [2, 2, 4], "approximator_num_channels": 8,
    "approximator_hidden_dim": 16, "approximator_layers": 2,
}  # fmt: skip
RANK = 4
CLIP = {  # CLIP-L modules (at a tiny width): one attention and one MLP linear
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (32, 32),
    "text_encoder.text_model.encoder.layers.0.mlp.fc1": (32, 64),
}


def random_peft(widths: Widths, seed: int = 0, te: bool = True) -> dict[str, np.ndarray]:
    """A rank-4 PEFT LoRA on every linear of the transformer (and two of CLIP-L)."""
    rng = np.random.default_rng(seed)
    shapes = {f"transformer.{m}": s for m, s in widths.module_shapes().items()}
    out = {}
    for module, (n_in, n_out) in (shapes | (CLIP if te else {})).items():
        out[f"{module}.lora_A.weight"] = rng.standard_normal((RANK, n_in), dtype=np.float32)
        out[f"{module}.lora_B.weight"] = rng.standard_normal((n_out, RANK), dtype=np.float32)
    return out


def deltas(peft: dict[str, np.ndarray], dtype=np.float64) -> dict[str, np.ndarray]:
    modules = {k.removesuffix(".lora_A.weight") for k in peft if k.endswith(".lora_A.weight")}
    return {
        m: peft[f"{m}.lora_B.weight"].astype(dtype) @ peft[f"{m}.lora_A.weight"].astype(dtype)
        for m in modules
    }


def assert_same_deltas(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(deltas(got)) == sorted(deltas(want))
    for wide in (np.float64, np.float32):
        g, w = deltas(got, wide), deltas(want, wide)
        for module in w:
            assert np.array_equal(g[module], w[module]), module


def through_file(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return load(save(tensors))


def test_widths_from_config():
    w = Widths.from_config(FLUX)
    assert (w.family, w.inner_dim, w.mlp_hidden_dim) == ("flux", 16, 64)
    assert (w.num_layers, w.num_single_layers, w.joint_attention_dim) == (1, 1, 32)
    wide = Widths.from_config(FLUX_WIDE)
    assert (wide.inner_dim, wide.mlp_hidden_dim, wide.guidance_embeds) == (12, 48, True)
    assert Widths.from_config(CHROMA).family == "chroma"
    full = Widths.from_config({})
    assert (full.inner_dim, full.mlp_hidden_dim, full.num_single_layers) == (3072, 12288, 38)


@pytest.mark.parametrize("config", [FLUX, FLUX_WIDE, CHROMA], ids=["flux", "wide", "chroma"])
def test_module_shapes_are_diffusers_linears(config):
    """The modules enumerated from a config are exactly the model's linears, in/out."""
    torch = pytest.importorskip("torch")
    from diffusers import ChromaTransformer2DModel, FluxTransformer2DModel

    cls = ChromaTransformer2DModel if config is CHROMA else FluxTransformer2DModel
    model = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
    linears = {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    assert Widths.from_config(config).module_shapes() == linears


@pytest.mark.parametrize("layout", ["kohya", "onetrainer", "comfyui"])
@pytest.mark.parametrize("alpha", [None, 8.0, 1.0], ids=["alpha=rank", "alpha=8", "alpha=1"])
@pytest.mark.parametrize("config", [FLUX, FLUX_WIDE], ids=["flux", "wide"])
def test_layout_twins_convert_to_the_same_deltas(layout, alpha, config):
    widths = Widths.from_config(config)
    peft = random_peft(widths)
    twin = through_file(from_diffusers(peft, layout, widths, alpha))
    converted = to_diffusers(twin, widths)
    assert converted.dropped == []
    # OneTrainer names CLIP-L as kohya does (lora_te1_).
    assert set(converted.layouts) == {layout} | ({"kohya"} if layout == "onetrainer" else set())
    assert_same_deltas(converted.tensors, peft)
    assert all(v.dtype == np.float32 for v in converted.tensors.values())
    # The PEFT original itself passes through unchanged.
    assert_same_deltas(to_diffusers(peft, widths).tensors, peft)


def test_twin_names():
    """What each writer emits: fused BFL modules for kohya/ComfyUI, diffusers names for
    OneTrainer, with the whole fused rank in one lora_down."""
    widths = Widths.from_config(FLUX)
    peft = random_peft(widths)
    kohya = from_diffusers(peft, "kohya", widths, alpha=8.0)
    up = kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert up.shape == (3 * 16 + 64, 4 * RANK)
    assert kohya["lora_unet_single_blocks_0_linear1.alpha"] == 8.0 * 4  # alpha/rank kept: 2
    assert kohya["lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight"].shape == (12, 16)
    assert "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight" in kohya
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in kohya
    assert not any("to_q" in k for k in kohya)
    comfy = from_diffusers(peft, "comfyui", widths)
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight" in comfy
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.alpha" in comfy
    onetrainer = from_diffusers(peft, "onetrainer", widths)
    assert "lora_transformer_transformer_blocks_0_ff_net_0_proj.lora_down.weight" in onetrainer
    assert "lora_transformer_single_transformer_blocks_0_attn_to_q.alpha" in onetrainer
    with pytest.raises(ValueError, match="not a power of two"):
        from_diffusers(peft, "kohya", widths, alpha=3.0)


def dense_pair(rng, rows: int, cols: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.standard_normal((rank, cols), dtype=np.float32),
        rng.standard_normal((rows, rank), dtype=np.float32),
    )


@pytest.mark.parametrize("config", [FLUX, FLUX_WIDE, CHROMA], ids=["flux", "wide", "chroma"])
@pytest.mark.parametrize("prefix", ["lora_unet_", "diffusion_model."])
def test_dense_fused_modules_convert_exactly(config, prefix):
    """A trained (dense) fused lora_up: each target's delta is its row block of
    (up @ down) * alpha/rank."""
    widths = Widths.from_config(config)
    inner, mlp = widths.inner_dim, widths.mlp_hidden_dim
    rng = np.random.default_rng(1)
    fused = {
        "single_blocks.0.linear1": (
            [inner, inner, inner, mlp],
            ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
            "single_transformer_blocks.0",
        ),
        "double_blocks.0.img_attn.qkv": (
            [inner] * 3,
            ["attn.to_q", "attn.to_k", "attn.to_v"],
            "transformer_blocks.0",
        ),
        "double_blocks.0.txt_attn.qkv": (
            [inner] * 3,
            ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
            "transformer_blocks.0",
        ),
    }
    tensors, expected = {}, {}
    for (name, (dims, targets, block)), (rank, alpha) in zip(
        fused.items(), [(6, 3.0), (5, 20.0), (8, 5.0)], strict=True
    ):
        down, up = dense_pair(rng, sum(dims), inner, rank)
        key = prefix + (name.replace(".", "_") if prefix == "lora_unet_" else name)
        a, b = ("lora_down", "lora_up") if prefix == "lora_unet_" else ("lora_A", "lora_B")
        tensors |= {f"{key}.{a}.weight": down, f"{key}.{b}.weight": up}
        tensors[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
        full = up.astype(np.float64) @ down.astype(np.float64) * (alpha / rank)
        starts = np.cumsum([0, *dims])
        for target, lo, hi in zip(targets, starts, starts[1:], strict=False):
            expected[f"transformer.{block}.{target}"] = (full[lo:hi], down)
    converted = to_diffusers(tensors, widths)
    assert converted.dropped == []
    got = deltas(converted.tensors)
    assert sorted(got) == sorted(expected)
    for module, (want, down) in expected.items():
        # Dense: every target keeps the whole lora_down, at the fused rank.
        assert np.array_equal(converted.tensors[f"{module}.lora_A.weight"], down)
        # alpha/rank = 0.5 and 4 are exact; 5/8 is one float32 rounding of lora_B.
        np.testing.assert_allclose(got[module], want, rtol=1e-6, atol=1e-6, err_msg=module)
        if "add_" not in module:
            np.testing.assert_allclose(got[module], want, rtol=1e-12, atol=1e-12)


def test_mismatched_fused_up_is_refused_naming_the_module():
    widths = Widths.from_config(FLUX)  # inner 16, MLP 64: linear1 needs 3*16 + 64 = 112 rows
    rng = np.random.default_rng(2)
    down, up = dense_pair(rng, 3 * 12 + 48, 16, 4)  # a linear1 made at inner 12
    tensors = {
        "lora_unet_single_blocks_0_linear1.lora_down.weight": down,
        "lora_unet_single_blocks_0_linear1.lora_up.weight": up,
    }
    with pytest.raises(ValueError, match=r"lora_unet_single_blocks_0_linear1.*\(84, 4\).*112"):
        to_diffusers(tensors, widths)
    down, up = dense_pair(rng, 3 * 12, 16, 4)
    tensors = {
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": down,
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": up,
    }
    with pytest.raises(ValueError, match=r"diffusion_model\.double_blocks\.0\.img_attn\.qkv"):
        to_diffusers(tensors, widths)
    # A whole twin made at one width is refused at another, not loaded wrong.
    wide = Widths.from_config(FLUX_WIDE)
    twin = from_diffusers(random_peft(wide, te=False), "kohya", wide)
    with pytest.raises(ValueError, match="lora_unet_"):
        to_diffusers(twin, widths)


def test_final_layer_halves_swap_as_diffusers_does():
    """BFL's final adaLN projects to (shift, scale); diffusers' norm_out.linear to
    (scale, shift): lora_up's halves swap, as diffusers' own converter swaps them."""
    widths = Widths.from_config(FLUX)
    rng = np.random.default_rng(3)
    down, up = dense_pair(rng, 32, 16, 4)
    converted = to_diffusers(
        {
            "lora_unet_final_layer_adaLN_modulation_1.lora_down.weight": down,
            "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight": up,
            "lora_unet_final_layer_adaLN_modulation_1.alpha": np.array(8.0, dtype=np.float32),
        },
        widths,
    )
    b = converted.tensors["transformer.norm_out.linear.lora_B.weight"]
    assert np.array_equal(b, np.concatenate([up[16:], up[:16]]) * 2)


def test_kohya_agrees_with_diffusers_converter():
    """Where diffusers' kohya converter works at any width (all but single blocks'
    linear1, whose split it fixes at Flux.1's full width), both give the same deltas."""
    torch = pytest.importorskip("torch")
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    widths = Widths.from_config(FLUX_WIDE)
    kohya = from_diffusers(random_peft(widths, seed=4, te=False), "kohya", widths)
    kohya = {k: v for k, v in kohya.items() if "_linear1" not in k}
    # A dense fused module too (alpha = rank: diffusers splits alpha/rank between A and B).
    down, up = dense_pair(np.random.default_rng(7), 3 * widths.inner_dim, widths.inner_dim, 6)
    name = "lora_unet_double_blocks_1_img_attn_qkv"
    kohya |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    kohya[f"{name}.alpha"] = np.array(6.0, dtype=np.float32)
    ours = to_diffusers(kohya, widths).tensors
    theirs = _convert_kohya_flux_lora_to_diffusers(
        {k: torch.from_numpy(v) for k, v in kohya.items()}
    )
    theirs = {
        (k if k.startswith("transformer.") else f"transformer.{k}"): v.numpy()
        for k, v in theirs.items()
    }
    got, want = deltas(ours), deltas(theirs)
    assert sorted(got) == sorted(want)
    for module in want:
        assert np.array_equal(got[module], want[module]), module


def test_chroma_drops_modulation_keys():
    widths = Widths.from_config(CHROMA)
    peft = random_peft(widths)
    twin = from_diffusers(peft, "kohya", widths, alpha=8.0)
    assert "lora_unet_distilled_guidance_layer_layers_1_out_layer.lora_up.weight" in twin
    rng = np.random.default_rng(5)
    extra = {  # Flux.1 modules Chroma does not have, and T5
        "lora_unet_double_blocks_0_img_mod_lin": (16, 96),
        "lora_unet_double_blocks_0_txt_mod_lin": (16, 96),
        "lora_unet_single_blocks_0_modulation_lin": (16, 48),
        "lora_unet_final_layer_adaLN_modulation_1": (16, 32),
        "lora_unet_time_in_in_layer": (256, 16),
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q": (32, 32),
    }
    for name, (n_in, n_out) in extra.items():
        down, up = dense_pair(rng, n_out, n_in, 4)
        twin |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
        twin[f"{name}.alpha"] = np.array(4.0, dtype=np.float32)
    converted = to_diffusers(through_file(twin), widths)
    assert converted.dropped == sorted(extra)
    assert_same_deltas(converted.tensors, peft)


def test_clip_names_resolve_against_the_loaded_text_encoder():
    """transformers 5's CLIPTextModel has no `text_model.` level: given its module names,
    CLIP-L groups are emitted as it names them; names it lacks are dropped."""
    widths = Widths.from_config(FLUX)
    peft = random_peft(widths)
    te_modules = {"encoder.layers.0.self_attn.q_proj", "encoder.layers.0.mlp.fc1"}
    for layout in ("kohya", "comfyui"):
        twin = from_diffusers(peft, layout, widths)
        converted = to_diffusers(twin, widths, text_encoder_modules=te_modules)
        assert "text_encoder.encoder.layers.0.mlp.fc1.lora_A.weight" in converted.tensors
        converted = to_diffusers(twin, widths, text_encoder_modules={"encoder.layers.0.mlp.fc1"})
        assert len(converted.dropped) == 1 and "q_proj" in converted.dropped[0]


def test_peft_alphas_diff_b_dora_and_duplicates():
    widths = Widths.from_config(FLUX)
    peft = random_peft(widths, te=False)
    b = "transformer.x_embedder.lora_B.weight"
    assert np.array_equal(to_diffusers(peft, widths, alphas=8.0).tensors[b], peft[b] * 2)
    scaled = to_diffusers(peft, widths, alphas={"transformer.x_embedder": 2.0}).tensors
    assert np.array_equal(scaled[b], peft[b] / 2)
    p = "transformer.proj_out.lora_B.weight"
    assert np.array_equal(scaled[p], peft[p])

    kohya = from_diffusers(peft, "kohya", widths)
    kohya["lora_unet_img_in.diff_b"] = np.ones(16, dtype=np.float32)
    kohya["lora_unet_txt_in.dora_scale"] = np.ones((1, 32), dtype=np.float32)
    kohya["lora_unet_no_such_module.lora_down.weight"] = np.ones((4, 16), dtype=np.float32)
    kohya["lora_unet_no_such_module.lora_up.weight"] = np.ones((16, 4), dtype=np.float32)
    converted = to_diffusers(kohya, widths)
    assert converted.dropped == [
        "lora_unet_img_in.diff_b", "lora_unet_no_such_module", "lora_unet_txt_in"
    ]  # fmt: skip
    assert "lora_unet_img_in" in converted.applied
    assert "transformer.x_embedder.lora_A.weight" in converted.tensors
    assert "transformer.context_embedder.lora_A.weight" not in converted.tensors

    both = from_diffusers(peft, "kohya", widths) | {
        k: v for k, v in peft.items() if k.startswith("transformer.x_embedder.")
    }
    with pytest.raises(ValueError, match="both convert to transformer.x_embedder"):
        to_diffusers(both, widths)


def test_tiny_flux_outputs_match_end_to_end():
    """The kohya twin, converted and loaded with diffusers/peft, renders bit-identically
    to the PEFT original in a tiny FluxTransformer2DModel."""
    torch = pytest.importorskip("torch")
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    config = {k: v for k, v in FLUX.items() if not k.startswith("_")}
    model = FluxTransformer2DModel(**config).eval()
    widths = Widths.from_config(FLUX)
    peft = random_peft(widths, seed=6, te=False)
    converted = to_diffusers(from_diffusers(peft, "kohya", widths, alpha=8.0), widths)

    def as_torch(tensors):
        return {k: torch.from_numpy(v) for k, v in tensors.items()}

    model.load_lora_adapter(as_torch(peft), prefix="transformer", adapter_name="peft")
    model.load_lora_adapter(as_torch(converted.tensors), prefix="transformer", adapter_name="kohya")
    gen = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 4, 64, generator=gen),
        "encoder_hidden_states": torch.randn(1, 3, 32, generator=gen),
        "pooled_projections": torch.randn(1, 32, generator=gen),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(4, 3),
        "txt_ids": torch.zeros(3, 3),
        "return_dict": False,
    }
    outputs = {}
    with torch.no_grad():
        for name in ("peft", "kohya"):
            model.set_adapters(name)
            outputs[name] = model(**inputs)[0]
        model.disable_lora()
        base = model(**inputs)[0]
    assert torch.equal(outputs["peft"], outputs["kohya"])
    assert not torch.equal(outputs["peft"], base)
