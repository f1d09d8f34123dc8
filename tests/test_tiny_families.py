"""The tiny pipelines of the other families (farm/render/tiny_pipelines.py): each is its
family's diffusers pipeline, saves and loads back offline rendering the same pixels, and
takes a PEFT LoRA whose strength changes the image and whose 0 gives the base back."""

from __future__ import annotations

import numpy as np
import pytest

from farm.render.tiny_pipelines import KINDS, RENDER, build

PROMPTS = ["a red circle on a white background", "a neon city at night, cyberpunk style"]
CLASSES = {
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux-dev": "FluxPipeline",
    "flux-schnell": "FluxPipeline",
    "chroma": "ChromaPipeline",
    "qwen-image": "QwenImagePipeline",
    "z-image": "ZImagePipeline",
}
# Kinds whose guidance takes a negative prompt: true CFG (Chroma, Qwen-Image, whose scale
# has an argument of its own) and Z-Image's CFG.
NEGATIVE = ("chroma", "qwen-image", "z-image")


def render(pipe, kind: str) -> np.ndarray:
    """Both prompts in one call at the kind's test settings, one CPU generator each."""
    import torch

    settings = RENDER[kind]
    scale = "true_cfg_scale" if kind == "qwen-image" else "guidance_scale"
    guidance = {scale: settings["guidance"]}
    if kind in NEGATIVE:
        guidance["negative_prompt"] = ["blurry"] * len(PROMPTS)
    return pipe(
        # A new list each call: ZImagePipeline writes its chat template into the list.
        prompt=list(PROMPTS),
        num_inference_steps=settings["steps"],
        width=settings["width"],
        height=settings["height"],
        generator=[torch.Generator("cpu").manual_seed(i) for i in range(len(PROMPTS))],
        output_type="np",
        **guidance,
    ).images


class Built:
    def __init__(self, kind: str, folder):
        self.pipe = build(kind)
        self.pipe.set_progress_bar_config(disable=True)
        # Saved before any LoRA goes in, and its images rendered with none.
        self.pipe.save_pretrained(folder, safe_serialization=True)
        self.folder = folder
        self.images = render(self.pipe, kind)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each kind built, saved and rendered once for the module."""
    cache: dict[str, Built] = {}

    def get(kind: str) -> Built:
        if kind not in cache:
            cache[kind] = Built(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_builds_saves_and_loads_back_identically(built, kind):
    from diffusers import DiffusionPipeline

    b = built(kind)
    assert type(b.pipe).__name__ == CLASSES[kind]
    assert b.images.shape == (2, RENDER[kind]["height"], RENDER[kind]["width"], 3)
    for image in b.images:
        assert image.std() > 0.01  # not one flat colour
    assert not np.array_equal(b.images[0], b.images[1])  # the prompt reaches the image

    for cls in (DiffusionPipeline, type(b.pipe)):
        loaded = cls.from_pretrained(b.folder, use_safetensors=True)
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is type(b.pipe)
        assert np.array_equal(render(loaded, kind), b.images)

    if kind == "sd2":
        assert loaded.scheduler.config.prediction_type == "v_prediction"
        assert loaded.unet.config.use_linear_projection
        assert loaded.unet.config.cross_attention_dim == loaded.text_encoder.config.hidden_size
    if kind == "sdxl":
        assert loaded.unet.config.addition_embed_type == "text_time"
    if kind.startswith("flux"):
        assert loaded.transformer.config.guidance_embeds == (kind == "flux-dev")
        assert loaded.vae.config.latent_channels == 16
    if kind in ("qwen-image", "z-image"):
        # The prompt templates tokenize as Qwen's tokenizers split them: Qwen-Image drops
        # its system prompt's 34 tokens from the text encoder's output.
        template = loaded.prompt_template_encode if kind == "qwen-image" else None
        if template is not None:
            assert len(loaded.tokenizer(template.split("{}")[0]).input_ids) == 34
        encoder = "Qwen2_5_VLForConditionalGeneration" if kind == "qwen-image" else "Qwen3Model"
        assert type(loaded.text_encoder).__name__ == encoder


def test_building_is_deterministic():
    import torch

    a, b, other = build("flux-dev", seed=3), build("flux-dev", seed=3), build("flux-dev", seed=4)
    for component in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        x, y = getattr(a, component).state_dict(), getattr(b, component).state_dict()
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), component
    q = "transformer_blocks.0.attn.to_q.weight"
    assert not torch.equal(a.transformer.state_dict()[q], other.transformer.state_dict()[q])


def test_ensure_builds_once_into_place(tmp_path, monkeypatch):
    from farm.render import tiny_pipelines as pipelines

    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    assert pipelines.default_dir("sdxl") == tmp_path / "home" / "models" / "tiny-sdxl-v1"
    with pytest.raises(ValueError, match="unknown tiny pipeline kind"):
        pipelines.default_dir("sd3")

    target = tmp_path / "models" / "tiny-flux-schnell"
    assert pipelines.ensure("flux-schnell", target) == target
    index = (target / "model_index.json").read_text()
    assert "FluxPipeline" in index
    assert {p.name for p in (target / "transformer").iterdir()} >= {
        "config.json",
        "diffusion_pytorch_model.safetensors",
    }
    # A second call finds the folder and builds nothing; no temp folders are left behind.
    monkeypatch.setattr(pipelines, "build", lambda *a, **k: pytest.fail("built twice"))
    assert pipelines.ensure("flux-schnell", target) == target
    assert [p.name for p in target.parent.iterdir()] == ["tiny-flux-schnell"]


@pytest.mark.parametrize("kind", KINDS)
def test_lora_strength_changes_the_image_and_zero_gives_it_back(built, kind, tmp_path):
    from safetensors.torch import save_file

    b = built(kind)
    pipe = b.pipe
    path = tmp_path / "lora.safetensors"
    state = lora_state(pipe)
    save_file(state, str(path))
    pipe.load_lora_weights(str(path), adapter_name="tiny", use_safetensors=True)
    try:
        # Every component the file names took its LoRA layers.
        for component in {key.split(".")[0] for key in state}:
            modules = getattr(pipe, component).named_modules()
            layers = [name for name, _ in modules if name.endswith("lora_A")]
            assert len(layers) == sum(k.startswith(f"{component}.") for k in state) // 2
        pipe.set_adapters(["tiny"], [1.0])
        assert not np.array_equal(render(pipe, kind), b.images)
        pipe.set_adapters(["tiny"], [0.0])
        assert np.array_equal(render(pipe, kind), b.images)
    finally:
        pipe.unload_lora_weights()


# Attention projections a LoRA adapts, by the component's module-name suffix.
TARGETS = {
    "unet": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_k", "attn2.to_v"),
    "transformer": ("attn.to_q", "attn.to_k", "attn.to_v", "attention.to_q", "attention.to_v"),
    "text_encoder": ("self_attn.q_proj", "self_attn.v_proj"),
    "text_encoder_2": ("self_attn.q_proj", "self_attn.v_proj"),
}


def lora_state(pipe, rank: int = 2) -> dict:
    """A random PEFT LoRA in diffusers' key naming for the denoiser's attention and each
    CLIP text encoder (not T5); B is nonzero so it changes the output."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    gen = torch.Generator().manual_seed(0)
    state = {}
    for component, suffixes in TARGETS.items():
        model = getattr(pipe, component, None)
        if model is None:
            continue
        clip = isinstance(model, CLIPTextModel | CLIPTextModelWithProjection)
        if component.startswith("text_encoder") and not clip:
            continue  # T5: LoRAs for Flux and Chroma adapt the transformer
        for name, module in model.named_modules():
            if not name.endswith(suffixes):
                continue
            # SD files name CLIP's modules under `text_model.`; diffusers maps them.
            if clip and not name.startswith("text_model."):
                name = "text_model." + name
            key = f"{component}.{name}"
            down = torch.randn(rank, module.in_features, generator=gen) * 0.3
            up = torch.randn(module.out_features, rank, generator=gen) * 0.3
            state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"] = down, up
    assert state
    return state
