"""Which contact sheets a job gets, and where each image sits on its sheet.

One sheet per prompt and LoRA set: strengths across, seeds down; with two or more swept
LoRAs, one sheet per seed; a training run's checkpoints down, one sheet per prompt and
seed. The sheets of one prompt and settings are found among that prompt's shots alone, so
the report can hold one prompt's shots at a time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from farm.report.runs import Place, checkpoint_label
from farm.report.sheets import Axis, SheetCell
from farm.report.shots import Shot
from farm.spec.strength import format_number

# About how many of a prompt's images one sheet (and the report, while laying it out)
# holds: a bigger prompt's seeds are split into blocks, a sheet each.
SHEET_SHOTS = 2000


class SeedBlocks:
    """A prompt's seeds in blocks of about SHEET_SHOTS images: the seeds a sheet holds,
    and the blocks packed into buckets of about `per_bucket` images, in a fixed order.

    A prompt of a few thousand images is one block, and its sheet has every seed down; a
    bigger one gets a sheet per block of seeds (by rank), so no sheet, and no step of the
    report, holds more than about SHEET_SHOTS of a prompt's images at once."""

    def __init__(self, seeds: set[int], prompt_shots: dict[tuple, int],
                 per_bucket: int) -> None:  # fmt: skip
        self.rank = {seed: i for i, seed in enumerate(sorted(seeds))}
        count = max(1, len(seeds))
        # Seeds a block holds: images per seed taken as the prompt's images over all seeds.
        self.size = {key: max(1, SHEET_SHOTS * count // max(1, n))
                     for key, n in prompt_shots.items()}  # fmt: skip
        self.split = {key for key, size in self.size.items() if size < count}
        # Packed, not hashed: a hash would leave some buckets a few blocks fuller.
        self._bucket: dict[tuple, int] = {}
        bucket = filled = 0
        for key in sorted(prompt_shots, key=repr):
            blocks = -(-count // self.size[key])
            share = -(-prompt_shots[key] // blocks)
            for block in range(blocks):
                if filled and filled + share > per_bucket:
                    bucket, filled = bucket + 1, 0
                self._bucket[(key, block)] = bucket
                filled += share
        self.buckets = bucket + 1

    def block(self, shot: Shot) -> int:
        return self.rank.get(shot.seed, 0) // self.size.get((shot.text, shot.context), 1)

    def bucket(self, shot: Shot) -> int:
        """The bucket of the shot's sheets: its prompt and settings, and its block."""
        return self._bucket.get(((shot.text, shot.context), self.block(shot)), 0)

    def is_split(self, text: str, context: tuple) -> bool:
        return (text, context) in self.split


Sheet = tuple[str, Axis, Axis, dict]  # title, rows, columns, (row, column) → shot


def sheets_of(shots: list[Shot], loras: list[str], places: dict[str, Place], varying: set[str],
              blocks: SeedBlocks | None = None) -> Iterator[Sheet]:  # fmt: skip
    """One sheet per prompt and LoRA set: strengths across, seeds down. With two or more
    swept LoRAs, one sheet per seed: the first LoRA's strength across, the others' down.
    A training run swept alone gets one sheet per prompt and seed: its checkpoints down,
    in training order, and strengths across. A prompt with more seeds than a block of
    `blocks` holds gets a sheet per block, titled with its seeds."""
    groups: dict[tuple, list[Shot]] = defaultdict(list)
    bare: dict[tuple, list[Shot]] = defaultdict(list)  # shots with every LoRA at a plain 0
    runs: dict[tuple, str] = {}  # the groups of a run swept alone, and the run
    for shot in shots:
        swept = [x.name for x in shot.loras if x.name in loras]
        run = places[swept[0]].run if len(swept) == 1 and swept[0] in places else None
        # A swept setting is None in the key: its value is an axis of the sheet.
        fixed = tuple((run if run and x.name == swept[0] else x.name,
                       None if x.name in loras else x.weight, x.shape)
                      for x in shot.loras)  # fmt: skip
        block = blocks.block(shot) if blocks else 0
        key = (shot.text, shot.context, fixed, block)
        groups[key].append(shot)
        if run:
            runs[key] = run
        if not any(x.weight or x.shape for x in shot.loras):
            bare[(shot.text, shot.context, block)].append(shot)
    for (text, context, fixed, block), members in groups.items():
        mine = [name for name, weight, _ in fixed if weight is None]
        extra = [f"{k} {v}" for k, v in context if k in varying]
        plain = [f"{n} {format_number(w)}" for n, w, _ in fixed if w is not None]
        seeds = sorted({s.seed for s in members})
        if blocks and blocks.is_split(text, context):
            extra.append(f"seeds {seeds[0]} to {seeds[-1]}")
        title = " · ".join([text, *([" × ".join(mine)] if mine else []), *plain, *extra])
        row_of = {seed: i for i, seed in enumerate(seeds)}
        if (text, context, fixed, block) in runs:
            yield from _run_sheets(title, members, loras, places)
            continue
        if not mine:
            cols = Axis("image", [""])
            rows = Axis("seed", [str(s) for s in seeds])
            yield title, rows, cols, {(row_of[s.seed], 0): s for s in members}
            continue
        first, others = mine[0], mine[1:]
        if not others and all(s.weight(first) for s in members):
            # One LoRA swept from above 0: the plain render of the same prompt is its 0 column.
            members = members + bare[(text, context, block)]
        strengths = sorted({s.weight(first) for s in members})
        cols = Axis(f"{first} strength", [format_number(v) for v in strengths])
        if not others:
            rows = Axis("seed", [str(s) for s in seeds])
            col_of = {v: i for i, v in enumerate(strengths)}
            cells = {(row_of[s.seed], col_of[s.weight(first)]): s for s in members}
            yield title, rows, cols, cells
            continue
        for seed in seeds:
            at_seed = [s for s in members if s.seed == seed]
            combos = sorted({tuple(s.weight(o) for o in others) for s in at_seed})
            rows = Axis(" · ".join(f"{o} strength" for o in others),
                        [" · ".join(format_number(v) for v in c) for c in combos])  # fmt: skip
            cells = {(combos.index(tuple(s.weight(o) for o in others)),
                      strengths.index(s.weight(first))): s for s in at_seed}  # fmt: skip
            yield f"{title} · seed {seed}", rows, cols, cells


def _run_sheets(title: str, members: list[Shot], loras: list[str],
                places: dict[str, Place]) -> Iterator[tuple[str, Axis, Axis, dict]]:  # fmt: skip
    """A run's sheets, one per seed: checkpoints down in training order, strengths across."""

    def checkpoint(shot: Shot) -> str:
        return next(x.name for x in shot.loras if x.name in loras)

    names = sorted({checkpoint(s) for s in members}, key=lambda n: places[n].order)
    strengths = sorted({s.weight(checkpoint(s)) for s in members})
    cols = Axis(f"{places[names[0]].run} strength", [format_number(v) for v in strengths])
    # Steps keep a row label short; the file of each is in the run's table and the gallery.
    rows = Axis("checkpoint", [checkpoint_label(n, places[n], short=True) for n in names])
    for seed in sorted({s.seed for s in members}):
        cells = {(names.index(checkpoint(s)), strengths.index(s.weight(checkpoint(s)))): s
                 for s in members if s.seed == seed}  # fmt: skip
        yield f"{title} · seed {seed}", rows, cols, cells


def sheet_name(title: str) -> str:
    """What a sheet's file is named for: its LoRAs and seed first, so they survive the cut."""
    text, *rest = title.split(" · ")
    return " ".join([*rest, text])


def sheet_cell(shot: Shot, marks: dict[str, list[str]]) -> SheetCell:
    return SheetCell(shot.key, shot.flags + tuple(marks.get(shot.item_id, ())))


def draw_sheet(store_url: str, name: str, title: str, rows: Axis, cols: Axis,
               cells: dict[tuple[int, int], SheetCell], max_pixels: int,
               cell_px: int) -> list[str]:  # fmt: skip
    """A task: draw one sheet's pages from the store's images and put them as
    `{name}{suffix}.png`; returns their keys."""
    from farm.report.measure import decode
    from farm.report.sheets import sheet_pages
    from farm.storage import open_store

    store = open_store(store_url)
    keys = []
    for suffix, png in sheet_pages(title=title, rows=rows, cols=cols, cells=cells,
                                   load=lambda key: decode(store.get(key)),
                                   max_pixels=max_pixels, cell_px=cell_px):  # fmt: skip
        keys.append(f"{name}{suffix}.png")
        store.put(keys[-1], png)
    return keys
