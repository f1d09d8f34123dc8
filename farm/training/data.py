"""Training sets for the tiny model: pictures drawn from a seed, with their prompts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farm.training.shapes import STYLES, combinations, random_scene

EMPTY_PROMPT_SHARE = 0.1  # prompts dropped to "" so classifier-free guidance has a base


@dataclass(frozen=True)
class Pictures:
    images: np.ndarray  # uint8 (N, 128, 128, 3)
    prompts: list[str]


def draw_set(count: int, seed: int, style: str = "plain") -> Pictures:
    """`count` pictures in `style`, every allowed combination equally often, in random order.

    The same (count, seed) gives the same scenes in every style, so a LoRA learns the
    style and nothing else.
    """
    rng = np.random.default_rng(seed)
    combos = combinations()
    order = rng.permutation(np.resize(np.arange(len(combos)), count))
    scenes = [random_scene(rng, *combos[i]) for i in order]
    paint = STYLES[style]
    images = np.stack([paint(s) for s in scenes]) if scenes else np.zeros((0, 128, 128, 3))
    return Pictures(images.astype(np.uint8), [s.prompt for s in scenes])


def drop_prompts(prompts: list[str], rng: np.random.Generator) -> list[str]:
    """The prompts with about one in ten replaced by the empty prompt."""
    keep = rng.random(len(prompts)) >= EMPTY_PROMPT_SHARE
    return [p if k else "" for p, k in zip(prompts, keep, strict=True)]
