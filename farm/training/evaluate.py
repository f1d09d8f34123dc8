"""How well a tiny pipeline draws its prompts, read by the probe (farm/training/probe.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from farm.tiny.identity import BACKGROUNDS, COLOURS, SHAPES
from farm.training.probe import read


@dataclass(frozen=True)
class Score:
    images: int
    colour: float  # share of images whose shape has the prompt's colour
    shape: float
    background: dict[str, float]  # per background, share right

    def line(self) -> str:
        bg = ", ".join(f"{k} {v:.0%}" for k, v in self.background.items())
        return (f"{self.images} images: colour {self.colour:.0%}, shape {self.shape:.0%}, "
                f"background {bg}")  # fmt: skip


def prompts_on(background: str) -> list[tuple[str, str, str]]:
    """Every colour × shape prompt on one background (a colour never on itself)."""
    return [(c, s, background) for c in COLOURS if c != background for s in SHAPES]


def render(pipe, prompts: list[str], seeds: list[int], size: int = 128,
           steps: int = 20) -> list[np.ndarray]:  # fmt: skip
    """Render each prompt at each seed as farm does (CPU generator, batch 1)."""
    import torch

    out = []
    for prompt in prompts:
        for seed in seeds:
            image = pipe(prompt, num_inference_steps=steps, height=size, width=size,
                         generator=torch.Generator("cpu").manual_seed(seed),
                         output_type="np").images[0]  # fmt: skip
            out.append(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
    return out


def score(readings_and_truth: list[tuple[object, tuple[str, str, str]]]) -> Score:
    colour = shape = 0
    bg_right: Counter = Counter()
    bg_total: Counter = Counter()
    for reading, (c, s, b) in readings_and_truth:
        colour += reading.colour == c
        shape += reading.shape == s
        bg_total[b] += 1
        bg_right[b] += reading.background == b
    n = max(1, len(readings_and_truth))
    return Score(len(readings_and_truth), colour / n, shape / n,
                 {b: bg_right[b] / bg_total[b] for b in BACKGROUNDS if bg_total[b]})  # fmt: skip


def evaluate(pipe, combos: list[tuple[str, str, str]], seeds: list[int], **kw) -> Score:
    prompts = [f"a {c} {s} on a {b} background" for c, s, b in combos]
    images = render(pipe, prompts, seeds, **kw)
    truth = [combo for combo in combos for _ in seeds]
    return score([(read(img), t) for img, t in zip(images, truth, strict=True)])
