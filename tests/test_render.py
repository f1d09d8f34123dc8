"""Property tests on the tiny model, and bit-exact parity with plain diffusers code."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from farm.plan.sweep import expand, group_units, make_plan
from farm.records.parts import decode_part, part_key
from farm.run.job import job_context
from farm.spec import parse_spec
from farm.storage.store import LocalStore

PROMPT = "cyberpunk cityscape with neon lights"
NEGATIVE = "low quality, blurry"
# Batch 1: the setting at which a farm image is a plain diffusers call bit for bit.
RENDER = {"steps": 8, "guidance": 7.5, "width": 64, "height": 64, "batch": 1}


def render(worker, tmp_path, name: str, loras=(), with_prompt: bool = False,
           flags: dict | None = None, **spec_over) -> dict[tuple, bytes]:  # fmt: skip
    """Render a spec with the worker; {(seed, ((lora, weight), ...)): image bytes}, keyed
    by (prompt, seed, …) with `with_prompt` (the prompt as written, without the LoRA tags
    a row's prompt carries). `flags`, if given, gets each image's row flags by the same key."""
    data = {
        "job": name,
        "prompts": [PROMPT],
        "negative_prompt": NEGATIVE,
        "seeds": [7, 8],
        "loras": list(loras),
        "render": RENDER,
        **spec_over,
    }
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = LocalStore(tmp_path / name)
    ctx = job_context(plan, store)
    images = {}
    for unit in group_units(expand(plan)):
        report = worker.render(unit, ctx)
        assert report.images == len(unit.items)
        rows = decode_part(store.get(part_key(unit.unit_id))).to_pylist()
        for row in rows:
            key = (row["seed"], tuple((lo["name"], lo["weight"]) for lo in row["loras"]))
            if with_prompt:
                key = (re.sub(r"\s*<lora:[^<>]*>", "", row["prompt"]), *key)
            images[key] = store.get(row["image_key"])
            if flags is not None:
                flags[key] = row["flags"]
    return images


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_strength_zero_equals_no_lora_bit_exact(cpu_worker, tmp_path):
    # LoRA units first, so any adapter state that leaked would show in the plain render.
    swept = render(
        cpu_worker, tmp_path, "swept", [{"name": "neon", "path": "tiny:neon", "alpha": [1, 0]}]
    )
    plain = render(cpu_worker, tmp_path, "plain")
    for seed in (7, 8):
        assert np.array_equal(pixels(swept[(seed, (("neon", 0.0),))]), pixels(plain[(seed, ())]))
        assert not np.array_equal(
            pixels(swept[(seed, (("neon", 1.0),))]), pixels(plain[(seed, ())])
        )


def test_half_strength_differs_from_full(cpu_worker, tmp_path):
    images = render(
        cpu_worker, tmp_path, "half", [{"name": "ink", "path": "tiny:ink", "alpha": [0.5, 1]}]
    )
    half, full = pixels(images[(7, (("ink", 0.5),))]), pixels(images[(7, (("ink", 1.0),))])
    assert np.abs(half.astype(int) - full.astype(int)).mean() > 1.0


def test_same_item_renders_same_bytes_twice(cpu_worker, tmp_path):
    lora = [{"name": "neon", "path": "tiny:neon", "alpha": [0.6]}]
    first = render(cpu_worker, tmp_path, "first", lora)
    render(cpu_worker, tmp_path, "between", [{"name": "ink", "path": "tiny:ink", "alpha": [1]}])
    second = render(cpu_worker, tmp_path, "first-again", lora)
    assert first.keys() == second.keys()
    for key in first:
        assert first[key] == second[key]


def test_retried_unit_with_written_part_renders_nothing(cpu_worker, tmp_path):
    data = {"job": "retry", "prompts": [PROMPT], "seeds": [1], "render": RENDER}
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = LocalStore(tmp_path / "retry")
    ctx = job_context(plan, store)
    (unit,) = group_units(expand(plan))
    assert not cpu_worker.render(unit, ctx).skipped
    again = cpu_worker.render(unit, ctx, attempt=2)
    assert again.skipped and again.images == 0
    assert decode_part(store.get(part_key(unit.unit_id))).num_rows == 1


@pytest.mark.parametrize(
    ("lora", "weight"),
    [(None, None), ("tiny:neon", 0.6), ("tiny:ink", 0.3), ("tiny:ink", 0.0)],
)
def test_parity_with_plain_diffusers(cpu_worker, tiny_dir, tmp_path, lora, weight):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from farm.loras.demo import demo_lora_path

    loras = [{"name": "x", "path": lora, "alpha": [weight]}] if lora else []
    farm_images = render(cpu_worker, tmp_path, "parity", loras)

    # The plain diffusers loop a user would write by hand.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(str(demo_lora_path(lora)), adapter_name="x")
        pipe.set_adapters(["x"], [weight])
    for seed in (7, 8):
        expected = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=RENDER["steps"],
            guidance_scale=RENDER["guidance"],
            width=RENDER["width"],
            height=RENDER["height"],
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        key = (seed, (("x", float(weight)),) if lora else ())
        assert np.array_equal(pixels(farm_images[key]), np.asarray(expected))


def test_the_pipeline_cache_keeps_the_most_recent_models(tiny_dir, tmp_path):
    import shutil

    from farm.render.pipelines import PipelineCache, pick_device, weights_bytes

    a, b = shutil.copytree(tiny_dir, tmp_path / "a"), shutil.copytree(tiny_dir, tmp_path / "b")
    cache = PipelineCache(pick_device("cpu"), capacity=1)
    first = cache.get(str(a))
    assert cache.get(str(a)) is first and cache.loads == 1
    cache.get(str(b))
    assert list(cache.pipelines) == [str(b)] and cache.loads == 2  # a was dropped
    cache.get(str(a))
    assert list(cache.pipelines) == [str(a)] and cache.loads == 3
    assert weights_bytes(str(a)) > 0


def test_a_folder_of_another_pipeline_loads_as_its_text_to_image_pipeline(tiny_dir, tmp_path):
    """A text-to-image folder loads with its own class; one saved as another pipeline
    (img2img here) goes through diffusers' mapping and still renders from text."""
    import json
    import shutil

    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    from farm.render.pipelines import load_pipeline, pick_device, pipeline_class

    assert pipeline_class(str(tiny_dir)) is StableDiffusionPipeline
    other = shutil.copytree(tiny_dir, tmp_path / "img2img")
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(
        json.dumps(index | {"_class_name": "StableDiffusionImg2ImgPipeline"})
    )
    assert pipeline_class(str(other)) is AutoPipelineForText2Image
    assert pipeline_class("org/not-a-local-folder") is AutoPipelineForText2Image
    assert type(load_pipeline(str(other), pick_device("cpu"))) is StableDiffusionPipeline
