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


def sheets_of(shots: list[Shot], loras: list[str], places: dict[str, Place],
              varying: set[str]) -> Iterator[tuple[str, Axis, Axis, dict]]:  # fmt: skip
    """One sheet per prompt and LoRA set: strengths across, seeds down. With two or more
    swept LoRAs, one sheet per seed: the first LoRA's strength across, the others' down.
    A training run swept alone gets one sheet per prompt and seed: its checkpoints down,
    in training order, and strengths across."""
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
        key = (shot.text, shot.context, fixed)
        groups[key].append(shot)
        if run:
            runs[key] = run
        if not any(x.weight or x.shape for x in shot.loras):
            bare[(shot.text, shot.context)].append(shot)
    for (text, context, fixed), members in groups.items():
        mine = [name for name, weight, _ in fixed if weight is None]
        extra = [f"{k} {v}" for k, v in context if k in varying]
        plain = [f"{n} {format_number(w)}" for n, w, _ in fixed if w is not None]
        title = " · ".join([text, *([" × ".join(mine)] if mine else []), *plain, *extra])
        seeds = sorted({s.seed for s in members})
        if (text, context, fixed) in runs:
            yield from _run_sheets(title, members, loras, places)
            continue
        if not mine:
            cols = Axis("image", [""])
            rows = Axis("seed", [str(s) for s in seeds])
            yield title, rows, cols, {(seeds.index(s.seed), 0): s for s in members}
            continue
        first, others = mine[0], mine[1:]
        if not others and all(s.weight(first) for s in members):
            # One LoRA swept from above 0: the plain render of the same prompt is its 0 column.
            members = members + bare[(text, context)]
        strengths = sorted({s.weight(first) for s in members})
        cols = Axis(f"{first} strength", [format_number(v) for v in strengths])
        if not others:
            rows = Axis("seed", [str(s) for s in seeds])
            cells = {(seeds.index(s.seed), strengths.index(s.weight(first))): s
                     for s in members}  # fmt: skip
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
