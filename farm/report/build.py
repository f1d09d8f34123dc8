"""`farm report`: everything under {job}/report/, written through the job's store.

Images are streamed: one series (for the response and its animation) or one sheet page is
held at a time, so memory does not grow with the number of images."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from farm.errors import FarmError
from farm.report.curves import curves_png
from farm.report.gallery import write_gallery
from farm.report.measure import decode
from farm.report.response import Summary, collapsed, curve_spans, pixel_distance, summarize
from farm.report.response_table import response_table
from farm.report.runs import Place, RunComparison, checkpoint_label, compare_runs, run_places
from farm.report.series import Series, series_of, swept_loras
from farm.report.series_tasks import SERIES_CACHE, SeriesJob, measure_all
from farm.report.sheets import DEFAULT_MAX_PIXELS, Axis, SheetCell, layout, sheet_pages
from farm.report.shots import JobShots, Shot, detail_row, read_shots, row_tables, shot_from_row
from farm.spec.strength import format_number
from farm.storage.store import Store

REPORT = "report/"
RESPONSE = f"{REPORT}response.parquet"
CURVES = f"{REPORT}curves.png"
INDEX = f"{REPORT}index.html"


class ReportError(FarmError, ValueError):
    """A report that cannot be drawn as asked; str() says what to change."""


@dataclass
class Report:
    job_id: str
    planned: int
    rendered: int
    summaries: list[Summary]
    keys: list[str] = field(default_factory=list)  # every file written, under the job
    notes: list[str] = field(default_factory=list)
    collapsed: int = 0  # images the report marked collapsed
    series: int = 0  # series measured in all
    measured: int = 0  # of those, measured by this report (the rest were kept)
    runs: list[RunComparison] = field(default_factory=list)  # training runs compared

    @property
    def sheets(self) -> list[str]:
        return [k for k in self.keys if k.startswith(f"{REPORT}sheets/")]

    @property
    def animations(self) -> list[str]:
        return [k for k in self.keys if k.startswith(f"{REPORT}animations/")]


def build_report(store: Store, *, max_pixels: int = DEFAULT_MAX_PIXELS, cell_px: int = 256,
                 echo: Callable[[str], None] = lambda _: None, workers: int | None = None,
                 address: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Report:  # fmt: skip
    """Write the job's report and return what it found. Safe to rerun: the same job gives
    the same keys, and files a rerun no longer writes are removed.

    Series are measured as tasks: on the Ray cluster at `address`, else on `workers`
    processes here (default: one per core); `progress(done, total)` counts their images.
    A series measured by an earlier report, with the same images, is not measured again."""
    job = read_shots(store)
    shots = job.shots
    loras = swept_loras(shots)
    places = {n: p for n, p in run_places(job.doc).items() if n in loras}
    loras = _training_order(loras, places)
    report = Report(job.doc["job_id"], job.planned, job.rendered, [], notes=_notes(job))
    # Every sheet is laid out before anything is written: a cap too small for one cell is
    # a bad flag, refused with the job's report folder untouched.
    sheets = list(_sheets(shots, loras, places))
    for _, rows_axis, cols_axis, _ in sheets:
        try:
            layout(rows_axis, cols_axis, cell_px, max_pixels)
        except ValueError as err:
            raise ReportError(f"--max-pixels: {err}") from None

    def put(key: str, data: bytes) -> None:
        store.put(key, data)
        report.keys.append(key)

    def load(key: str) -> Image.Image:
        return decode(store.get(key))

    measured = _measure(store, shots, loras, report.keys.append, cell_px, echo, workers,
                        address, progress)  # fmt: skip
    report.series, report.measured = len(measured.series), measured.computed
    marks = _mark_collapsed(measured.series, curve_spans(measured.rows))
    report.collapsed = len(marks)
    report.summaries = [summarize(lora, rows, curve)
                        for (lora, curve), rows in measured.curves.items()]  # fmt: skip
    report.runs = compare_runs(report.summaries, places, _apart(measured, shots, load))
    put(RESPONSE, response_table(measured.rows, report.summaries, report.runs))
    put(CURVES, curves_png(report.summaries, report.runs))
    echo("drawing contact sheets")
    _draw_sheets(sheets, marks, load, put, max_pixels, cell_px)
    echo("writing the gallery")
    axes = _axes(shots, loras, places)
    entries = _entries(store, job, axes, measured.d0, marks)
    write_gallery(entries, lambda name, data: put(f"{REPORT}{name}", data),
                  title=f"farm report: {report.job_id}", axes=[a for a, _ in axes],
                  notes=report.notes,
                  headlines=[run.sentence() for run in report.runs])  # fmt: skip
    written = set(report.keys)
    for key in list(store.list(REPORT)):
        if key not in written:  # left by an earlier report of this job
            store.delete(key)
    return report


@dataclass
class Measured:
    """Every series measured: its rows, the distance from strength 0 of each item, the
    rows of each (LoRA, curve), and the rows series by series."""

    rows: list[dict] = field(default_factory=list)
    d0: dict[str, float] = field(default_factory=dict)
    curves: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    series: list[list[dict]] = field(default_factory=list)
    # Each series' number → what it holds fixed besides its LoRA's strength: the prompt,
    # seed and settings, by which the series of two checkpoints of a run are paired.
    places: dict[int, tuple] = field(default_factory=dict)
    computed: int = 0  # series measured now, not kept from an earlier report


def _measure(store: Store, shots, loras: list[str], keep: Callable[[str], None], cell_px: int,
             echo, workers: int | None = None, address: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> Measured:  # fmt: skip
    """Measure each series of each swept LoRA and write its strength animation, as tasks
    (farm/report/series_tasks.py); results an earlier report kept are used as they are.
    `keep` is told every key the measuring leaves in the report."""
    out = Measured()
    jobs: list[SeriesJob] = []
    for lora in loras:
        series = series_of(shots, lora)
        echo(f"measuring {lora}: {len(series)} series")
        jobs += [SeriesJob(one, _animation_key(one, len(jobs) + i), lora)
                 for i, one in enumerate(series)]  # fmt: skip
    images = [0] + list(itertools.accumulate(len(job.series.shots) for job in jobs))
    results: list[dict] = [{}] * len(jobs)

    def count(series_done: int, _: int) -> None:
        if progress:
            progress(images[series_done], images[-1])

    for i, result, computed in measure_all(store, jobs, cell_px, workers=workers,
                                           address=address, progress=count):  # fmt: skip
        results[i] = result
        out.computed += computed
        keep(f"{SERIES_CACHE}{jobs[i].key}-{cell_px}.json")
        if result["animation"]:
            keep(result["animation"])
    for n, (job, result) in enumerate(zip(jobs, results, strict=True)):
        one, measured = job.series, result["rows"]
        for r in measured:
            r["series"], r["curve"] = n, one.curve
            if not math.isnan(r["d0_pixel"]):
                out.d0.setdefault(r["item_id"], r["d0_pixel"])
        out.rows += measured
        out.series.append(measured)
        out.places[n] = (one.text, one.seed, one.fixed[0])
        # A curve averages only series that start at strength 0: a blend swept from
        # 0.5 up measures from 0.5, which would drag another series' curve off zero.
        if one.shots[0][0] == 0.0:
            out.curves.setdefault((job.caption, one.curve), []).extend(measured)
    return out


def _apart(measured: Measured, shots: list[Shot], load):
    """How far each checkpoint's full-strength pictures are from the run's last one's,
    series by series: the pixel distance of each pair, written into the checkpoint's row
    as `to_last`, summed, with the last's distances from strength 0 summed beside it.
    Each of the last's pictures is read once, for every checkpoint it is compared with."""
    key_of = {s.item_id: s.key for s in shots}

    def at_full(c) -> dict[tuple, dict]:
        rows = measured.curves.get((c.name, c.summary.curve), [])
        return {measured.places[r["series"]]: r for r in rows
                if r["strength"] == c.summary.full and r["rendered"]}  # fmt: skip

    def apart(candidates: list, last) -> list[tuple[float, float]]:
        sums = {c.name: [0.0, 0.0] for c in candidates}
        full = last.summary.full
        comparable = [c for c in candidates if full is not None and c.summary.full == full]
        mine = {c.name: at_full(c) for c in comparable}
        for where, other in at_full(last).items():
            if math.isnan(other["d0_pixel"]):
                continue
            theirs = None  # read when a checkpoint other than the last needs it
            for c in comparable:
                row = mine[c.name].get(where)
                if row is None:
                    continue
                if c is last:
                    row["to_last"] = 0.0
                else:
                    if theirs is None:
                        theirs = np.asarray(load(key_of[other["item_id"]]))
                    row["to_last"] = pixel_distance(np.asarray(load(key_of[row["item_id"]])),
                                                    theirs)  # fmt: skip
                sums[c.name][0] += row["to_last"]
                sums[c.name][1] += other["d0_pixel"]
        compared = {c.name for c in comparable}
        return [(sums[c.name][0], sums[c.name][1]) if c.name in compared
                else (math.nan, math.nan) for c in candidates]  # fmt: skip

    return apart


def _training_order(loras: list[str], places: dict[str, Place]) -> list[str]:
    """The swept LoRAs with each run's checkpoints together, in training order, where the
    run's first checkpoint was seen."""
    first: dict[str, int] = {}
    for i, name in enumerate(loras):
        if name in places:
            first.setdefault(places[name].run, i)

    def key(item: tuple[int, str]) -> tuple[int, int]:
        i, name = item
        return (first[places[name].run], places[name].order) if name in places else (i, -1)

    return [name for _, name in sorted(enumerate(loras), key=key)]


def _draw_sheets(sheets: list, marks: dict, load, put, max_pixels: int, cell_px: int) -> None:
    for n, (title, rows_axis, cols_axis, at) in enumerate(sheets):
        cells = {pos: _cell(shot, marks) for pos, shot in at.items()}
        pages = sheet_pages(title=title, rows=rows_axis, cols=cols_axis, cells=cells,
                            load=load, max_pixels=max_pixels, cell_px=cell_px)  # fmt: skip
        for suffix, png in pages:
            put(f"{REPORT}sheets/{n:03d}-{_slug(_sheet_name(title))}{suffix}.png", png)


def _mark_collapsed(series: list[list[dict]], spans: dict[str, float]) -> dict[str, list[str]]:
    """Mark each series' collapsed rows (report_flags) and return item_id → the report's
    marks, for the sheets and the gallery. A series whose curve has no series from 0 to 1
    is measured against its own distance from its reference to 1."""
    marks: dict[str, list[str]] = {}
    for rows in series:
        full = next((r for r in rows if r["strength"] == 1.0), None)
        own = full["d0_structure"] if full else math.nan
        for r in collapsed(rows, spans.get(rows[0]["curve"], own)):
            r["report_flags"] = ["collapsed"]
            found = marks.setdefault(r["item_id"], [])
            if "collapsed" not in found:  # an image can be in two series
                found.append("collapsed")
    return marks


def _notes(job: JobShots) -> list[str]:
    notes = []
    if job.missing:
        status = job.doc.get("status") or "not finished"
        notes.append(f"{job.missing} of {job.planned} planned images are missing (job status: "
                     f"{status}); they show as missing on the sheets. Run `farm resume` to "
                     "render them, then `farm report` again.")  # fmt: skip
    for key in job.corrupt_parts:
        notes.append(f"{key}: unreadable part, its images are counted as missing")
    return notes


def _slug(text: str) -> str:
    """A safe file name part for any user text: ASCII words, plus a hash so it is unique."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return f"{words or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _animation_key(series: Series, n: int) -> str:
    name = f"{series.lora} {series.label}"
    return f"{REPORT}animations/{n:04d}-{_slug(name)}.webp"


def _sheets(shots: list[Shot], loras: list[str],
            places: dict[str, Place]) -> Iterator[tuple[str, Axis, Axis, dict]]:  # fmt: skip
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
    varying = _varying_context(shots)
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


def _sheet_name(title: str) -> str:
    """What a sheet's file is named for: its LoRAs and seed first, so they survive the cut."""
    text, *rest = title.split(" · ")
    return " ".join([*rest, text])


def _cell(shot: Shot, marks: dict[str, list[str]]) -> SheetCell:
    return SheetCell(shot.key, shot.flags + tuple(marks.get(shot.item_id, ())))


def _varying_context(shots: list[Shot]) -> set[str]:
    values: dict[str, set[str]] = defaultdict(set)
    for shot in shots:
        for k, v in shot.context:
            values[k].add(v)
    return {k for k, v in values.items() if len(v) > 1}


def _axes(shots: list[Shot], loras: list[str],
          places: dict[str, Place]) -> list[tuple[dict, Callable[[Shot], str]]]:  # fmt: skip
    """The gallery's axes, each with how to read it off a shot: prompt, seed, each swept
    LoRA's strength (a training run's: its checkpoint and its strength), and any setting
    that varies."""
    rendered = [s for s in shots if s.key]
    axes: list[tuple[dict, Callable[[Shot], str]]] = []

    def add(name: str, kind: str, values: list[str], get: Callable[[Shot], str]) -> None:
        axes.append(({"name": name, "label": name, "kind": kind, "values": values}, get))

    add("prompt", "prompt", list(dict.fromkeys(s.text for s in rendered)), lambda s: s.text)
    add("seed", "seed", [str(v) for v in sorted({s.seed for s in rendered})],
        lambda s: str(s.seed))  # fmt: skip
    runs: dict[str, list[str]] = defaultdict(list)
    for lora in loras:
        if lora in places:
            runs[places[lora].run].append(lora)
            continue
        values = sorted({s.weight(lora) for s in rendered})
        add(f"{lora} strength", "strength", [format_number(v) for v in values],
            lambda s, lora=lora: format_number(s.weight(lora)))  # fmt: skip
    for run, names in runs.items():
        names.sort(key=lambda n: places[n].order)
        labels = {n: checkpoint_label(n, places[n]) for n in names}

        def member(s: Shot, names=tuple(names)) -> str | None:
            return next((x.name for x in s.loras if x.name in names), None)

        add(f"{run} checkpoint", "checkpoint", [labels[n] for n in names],
            lambda s, m=member, at=labels: at.get(m(s) or "", "none"))  # fmt: skip
        values = sorted({s.weight(member(s) or "") for s in rendered})
        add(f"{run} strength", "strength", [format_number(v) for v in values],
            lambda s, member=member: format_number(s.weight(member(s) or "")))  # fmt: skip
    shapes: dict[str, set[str]] = defaultdict(set)
    for s in rendered:
        for x in s.loras:
            shapes[x.name].add(x.shape or "plain")
    for lora, values in shapes.items():
        if len(values) > 1:
            add(f"{lora} blocks/schedule", "other", sorted(values),
                lambda s, lora=lora: _shape_of(s, lora))  # fmt: skip
    for key in sorted(_varying_context(rendered)):
        add(key, "other", sorted({s.setting(key) or "" for s in rendered}),
            lambda s, key=key: s.setting(key) or "")  # fmt: skip
    if len({s.preset for s in rendered}) > 1:
        add("preset", "other", sorted({s.preset or "" for s in rendered}),
            lambda s: s.preset or "")  # fmt: skip
    return axes


def _shape_of(shot: Shot, lora: str) -> str:
    mine = next((x for x in shot.loras if x.name == lora), None)
    return (mine.shape or "plain") if mine else "plain"


def _entries(store: Store, job: JobShots, axes: list[tuple[dict, Callable[[Shot], str]]],
             d0: dict[str, float], marks: dict[str, list[str]]) -> Iterator[dict]:  # fmt: skip
    """Gallery entries, streamed from the rows again with every column (for the details)."""
    seen: set[str] = set()
    rows = (
        row
        for table in row_tables(store, job.doc, [], columns=None)
        for batch in table.to_batches(max_chunksize=512)
        for row in batch.to_pylist()
    )
    for row in rows:
        if row["item_id"] in seen:
            continue
        seen.add(row["item_id"])
        shot = shot_from_row(row)
        yield {
            "id": shot.item_id,
            "src": f"../{shot.key}",
            "axes": {axis["name"]: get(shot) for axis, get in axes},
            "flags": [*shot.flags, *marks.get(shot.item_id, ())],
            "d0": d0.get(shot.item_id),
            "detail": {"infotext": row.get("infotext") or "", "row": detail_row(row)},
        }
