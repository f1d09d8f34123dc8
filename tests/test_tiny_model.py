"""The trained tiny model draws its prompts, and its LoRAs show their style step by step.

Images are rendered by farm's own worker (tests/test_render.py's `render`) at the model
card's settings, 128×128 and 20 steps, and read by the numpy probe. The samples are fixed;
docs/tiny-model.md has the figures over every prompt and four seeds. They render in
batches of 8, a few times faster per image on a CPU than one at a time; what is drawn
does not depend on the batch.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_render import pixels, render

from farm.tiny.identity import BACKGROUNDS, COLOURS, SHAPES
from farm.training.evaluate import prompts_on, score
from farm.training.probe import STYLE_SCORES, read

CARD = {"steps": 20, "guidance": 7.5, "width": 128, "height": 128, "batch": 8}


def prompt(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def render_prompts(worker, tmp_path, name, combos, seeds, loras=(), flags=None) -> dict:
    """{(combo, seed, weights): uint8 image} for every combo, seed and LoRA weight: one job,
    so that items of different prompts share a pipeline call. `flags`, if given, gets each
    image's flags by the same key."""
    raw_flags: dict = {}
    images = render(worker, tmp_path, name, loras, prompts=[prompt(*c) for c in combos],
                    negative_prompt="", seeds=seeds, render=CARD, with_prompt=True,
                    flags=raw_flags)  # fmt: skip
    by_prompt = {prompt(*c): c for c in combos}
    if flags is not None:
        flags.update({(by_prompt[text], seed, weights): f
                      for (text, seed, weights), f in raw_flags.items()})  # fmt: skip
    return {(by_prompt[text], seed, weights): pixels(data)
            for (text, seed, weights), data in images.items()}  # fmt: skip


def test_colour_and_shape_on_white_are_drawn(cpu_worker, tmp_path):
    # Every colour × shape on white, one seed each, the seed turning with the prompt.
    combos = prompts_on("white")
    readings = []
    for seed in range(4):
        mine = combos[seed::4]
        images = render_prompts(cpu_worker, tmp_path, f"white-{seed}", mine, [seed])
        readings += [(read(img), combo) for (combo, _, _), img in images.items()]
    result = score(readings)
    assert result.images == 42
    assert result.colour >= 0.9, result.line()
    assert result.shape >= 0.75, result.line()
    assert result.background["white"] >= 0.9, result.line()


def test_every_background_is_drawn(cpu_worker, tmp_path):
    # Each background behind six shapes in colours it allows.
    combos = []
    for b in BACKGROUNDS:
        colours = [c for c in COLOURS if c != b]
        combos += [(colours[(i * 3) % len(colours)], s, b) for i, s in enumerate(SHAPES)]
    images = render_prompts(cpu_worker, tmp_path, "backgrounds", combos, [5])
    result = score([(read(img), combo) for (combo, _, _), img in images.items()])
    for background, right in result.background.items():
        assert right >= 0.9, (background, result.line())


def test_unknown_words_render(cpu_worker, tmp_path):
    images = render(cpu_worker, tmp_path, "unknown", prompts=["a zebra-striped teapot, très joli"],
                    seeds=[1], render=CARD | {"steps": 4})  # fmt: skip
    (image,) = images.values()
    assert pixels(image).shape == (128, 128, 3)


STYLE_PROMPTS = {
    # Backgrounds the style changes: neon darkens light ones, ink whitens dark ones.
    "neon": [("red", "circle", "white"), ("blue", "star", "gray")],
    "ink": [("yellow", "square", "blue"), ("white", "triangle", "green")],
}
STEPS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


@pytest.mark.parametrize("lora", ["neon", "ink"])
def test_style_grows_step_by_step_and_overdrive_is_broken_and_flagged(cpu_worker, tmp_path,
                                                                      lora):  # fmt: skip
    style = STYLE_SCORES[lora]
    loras = [{"name": lora, "path": f"tiny:{lora}", "alpha": [*STEPS, 4.0]}]
    flags: dict = {}
    images = render_prompts(cpu_worker, tmp_path, lora, STYLE_PROMPTS[lora], [0, 1], loras,
                            flags=flags)  # fmt: skip
    plain = render_prompts(cpu_worker, tmp_path, f"{lora}-plain", STYLE_PROMPTS[lora], [0, 1])
    curve, moved = {}, {}
    for w in [*STEPS, 4.0]:
        cells = [(key, img) for key, img in images.items() if key[2][0][1] == w]
        assert len(cells) == 4
        curve[w] = float(np.mean([style(img) for _, img in cells]))
        # Mean pixel distance from the same prompt and seed at strength 0.
        moved[w] = float(np.mean([np.abs(img.astype(float) - images[(c, s, ((lora, 0.0),))])
                                  .mean() for (c, s, _), img in cells]))  # fmt: skip
    # Little change at 0.2, the style at 1, and far less of it overdriven at 4.
    full = curve[1.0] - curve[0.0]
    assert full > 0.2, curve
    assert curve[0.2] - curve[0.0] < 0.35 * full, curve
    assert curve[4.0] < curve[0.0] + 0.6 * full, curve
    # The style score rises at every step from 0 to 1.
    scores = [curve[w] for w in STEPS]
    assert all(b > a for a, b in zip(scores, scores[1:], strict=False)), curve
    # Step by step, not a switch: every step of 0.2 moves the image further from strength 0,
    # 0.2 only a little, and no single step makes half the change (docs/tiny-model.md: the
    # largest makes 36% for neon and 35% for ink).
    distances = [moved[w] for w in STEPS]
    steps = list(zip(distances, distances[1:], strict=False))
    assert all(a < b for a, b in steps), moved
    assert moved[0.2] < 0.25 * moved[1.0], moved
    assert max(b - a for a, b in steps) < 0.45 * moved[1.0], moved
    # Overdriven at 4, every image is flagged; from 0 to 1, none is.
    for (_, _, weights), image_flags in flags.items():
        if weights[0][1] == 4.0:
            assert "overdriven" in image_flags, (weights, image_flags)
        else:
            assert image_flags == [], (weights, image_flags)
    for (combo, seed, weights), img in images.items():
        if weights[0][1] == 0.0:  # strength 0 is no LoRA, bit for bit
            assert np.array_equal(img, plain[(combo, seed, ())])
