"""The plan's types: a LoRA file as an adapter, an item (one image), a unit (items that
share an adapter set, rendered and written together) and a stream of units; and the
content ids they are named by. Only types and ids: nothing here plans."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from farm.spec.model import Render
from farm.spec.strength import Strength

# Items per unit: enough to amortise a dispatch, small enough to spread over workers. A
# spec's batch N makes units of max(UNIT_SIZE, N); `batch: auto` makes units of AUTO_UNIT,
# the largest call auto takes (16 renders some 12-20% cheaper an image than 8 on a CPU).
UNIT_SIZE = 8
AUTO_UNIT = 16
ID_HEX = 20  # 80 bits: collision-free for any realistic sweep

# An item's own render settings where they differ from the spec's `render:` (a prompt
# file line's steps, guidance, width, height): (field, value) pairs, sorted by field.
Settings = tuple[tuple[str, int | float], ...]


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    sha256: str
    shorthash: str
    # What of the file applies to the job's model (farm/families/placement.py), where
    # planning could tell: tensors applied and dropped, and the dropped layers' names.
    applied: int | None = field(default=None, compare=False)
    dropped: int | None = field(default=None, compare=False)
    dropped_names: tuple[str, ...] = field(default=(), compare=False)
    # A checkpoint of a training run: the run's name in the spec, and the checkpoint's
    # place in it (steps and epochs trained, where known).
    run: str | None = field(default=None, compare=False)
    step: int | None = field(default=None, compare=False)
    epoch: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Item:
    item_id: str
    prompt: str  # as stored and shown: with its <lora:…> tags
    text: str  # what the text encoder sees: tags removed
    negative_prompt: str
    seed: int
    loras: tuple[tuple[str, Strength], ...]  # (adapter name, strength), in prompt order
    alpha: float | None  # the swept strength when exactly one LoRA is swept
    catalog: tuple[tuple[str, str], ...] = ()
    preset: str | None = None  # the preset its strengths came from
    name: str | None = None  # a catalog's friendly output name, without the extension
    settings: Settings = ()  # () for the spec's render settings, as for most items

    def render_of(self, render: Render) -> Render:
        """The render settings this item is drawn with: the job's, with its own in place."""
        return dataclasses.replace(render, **dict(self.settings)) if self.settings else render


@dataclass(frozen=True)
class Unit:
    unit_id: str
    adapters: tuple[str, ...]  # adapter names this unit needs loaded
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Source:
    """One entry of the prompt axis: a prompt, or a catalog row's filled template."""

    prompt: str
    text: str
    tags: tuple[tuple[str, Strength], ...]
    catalog: tuple[tuple[str, str], ...] = ()
    preset: str | None = None  # a catalog row's preset (preset_by), set in its tags
    # A prompt file line's own: its render settings that differ from the spec's, its
    # negative prompt and its one seed, each in place of the spec's (None: the spec's).
    settings: Settings = ()
    negative: str | None = None
    seed: int | None = None


@dataclass
class UnitStream:
    """The units of one adapter set, made lazily; `items` is what the plan counts."""

    adapters: tuple[str, ...]
    units: Iterator[Unit]
    items: int
    size: int = UNIT_SIZE  # items per unit


def adapter_key(loras: Iterable[tuple[str, float]]) -> tuple[str, ...]:
    """The adapter set items share when they can go in one unit: names, sorted."""
    return tuple(sorted(n for n, _ in loras))


def content_id(payload: object) -> str:
    """A short, stable hash of a JSON-able value."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_HEX]
