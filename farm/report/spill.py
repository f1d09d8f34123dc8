"""The report's shots on the local disk, split into buckets by place.

A million images do not fit in the driver's memory as Python objects, and the report
needs them grouped (a series is the shots of one prompt, seed and settings). So the rows
are read once and each shot is appended to one of a few bucket files
(farm/storage/scratch.py), chosen by a hash of its place (prompt, settings and seed),
which every shot of a series shares. The report then holds one bucket at a time.
"""

from __future__ import annotations

from farm.report.shots import LoraSetting, Shot
from farm.storage.scratch import key_bucket

# Shots per bucket the report aims at. A bucket holds whole places (prompt, settings and
# seed), so one bigger than this holds a single place's images.
BUCKET_SHOTS = 5000


def place_bucket(shot: Shot, buckets: int) -> int:
    """The bucket of a shot's place: stable across processes and runs (not hash())."""
    return key_bucket([shot.text, shot.context, shot.seed], buckets)


def shot_json(shot: Shot) -> list:
    return [shot.item_id, shot.key, shot.text, shot.seed,
            [[x.name, x.weight, x.shape] for x in shot.loras], [list(c) for c in shot.context],
            list(shot.flags), shot.preset]  # fmt: skip


def shot_of(value: list) -> Shot:
    item_id, key, text, seed, loras, context, flags, preset = value
    return Shot(item_id, key, text, seed, tuple(LoraSetting(*x) for x in loras),
                tuple(tuple(c) for c in context), tuple(flags), preset)  # fmt: skip
