"""`farm report`: everything under {job}/report/, written through the job's store.

Images are streamed: one series (for the response and its animation) or one sheet page is
held at a time, so memory does not grow with the number of images."""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from farm.errors import FarmError
from farm.report.animate import strength_animation
from farm.report.curves import curves_png
from farm.report.gallery import write_gallery
from farm.report.measure import decode, measure
from farm.report.response import Summary, collapsed, curve_spans, summarize
from farm.report.series import Series, series_of, swept_loras
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

    @property
    def sheets(self) -> list[str]:
        return [k for k in self.keys if k.startswith(f"{REPORT}sheets/")]

    @property
    def animations(self) -> list[str]:
        return [k for k in self.keys if k.startswith(f"{REPORT}animations/")]


def build_report(store: Store, *, max_pixels: int = DEFAULT_MAX_PIXELS, cell_px: int = 256,
                 echo: Callable[[str], None] = lambda _: None) -> Report:  # fmt: skip
    """Write the job's report and return what it found. Safe to rerun: the same job gives
    the same keys, and files a rerun no longer writes are removed."""
    job = read_shots(store)
    shots = job.shots
    loras = swept_loras(shots)
    report = Report(job.doc["job_id"], job.planned, job.rendered, [], notes=_notes(job))
    # Every sheet is laid out before anything is written: a cap too small for one cell is
    # a bad flag, refused with the job's report folder untouched.
    sheets = list(_sheets(shots, loras))
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

    measured = _measure(shots, loras, load, put, cell_px, echo)
    marks = _mark_collapsed(measured.series, curve_spans(measured.rows))
    report.collapsed = len(marks)
    report.summaries = [summarize(lora, rows, curve)
                        for (lora, curve), rows in measured.curves.items()]  # fmt: skip
    put(RESPONSE, response_table(measured.rows, report.summaries))
    put(CURVES, curves_png(report.summaries))
    echo("drawing contact sheets")
    _draw_sheets(sheets, marks, load, put, max_pixels, cell_px)
    echo("writing the gallery")
    axes = _axes(shots, loras)
    entries = _entries(store, job, axes, measured.d0, marks)
    write_gallery(entries, lambda name, data: put(f"{REPORT}{name}", data),
                  title=f"farm report: {report.job_id}", axes=[a for a, _ in axes],
                  notes=report.notes)  # fmt: skip
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


def _measure(shots, loras: list[str], load, put, cell_px: int, echo) -> Measured:
    """Measure each series of each swept LoRA, and write its strength animation."""
    out = Measured()
    numbers = itertools.count()
    for lora in loras:
        series = series_of(shots, lora)
        echo(f"measuring {lora}: {len(series)} series")
        for one in series:
            n = next(numbers)
            measured, images = measure(one, load, n)
            for r in measured:
                r["curve"] = one.curve
                if not math.isnan(r["d0_pixel"]):
                    out.d0.setdefault(r["item_id"], r["d0_pixel"])
            out.rows += measured
            out.series.append(measured)
            # A curve averages only series that start at strength 0: a blend swept from
            # 0.5 up measures from 0.5, which would drag another series' curve off zero.
            if one.shots[0][0] == 0.0:
                out.curves.setdefault((lora, one.curve), []).extend(measured)
            frames = [(_caption(lora, s, shot), img)
                      for (s, img), (_, shot) in zip(images, one.shots, strict=True)
                      if img is not None]  # fmt: skip
            if len(frames) > 1:
                # An animation is watched at the image's own size (at least 128 px): small
                # renders enlarged to a sheet's cell would only make the file bigger.
                side = min(cell_px, max(128, *frames[0][1].size))
                put(_animation_key(one, n), strength_animation(frames, cell_px=side))
    return out


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


def _caption(lora: str, strength: float, shot: Shot) -> str:
    text = f"{lora} {format_number(strength)}"
    return f"{text} · {', '.join(shot.flags)}" if shot.flags else text


def _slug(text: str) -> str:
    """A safe file name part for any user text: ASCII words, plus a hash so it is unique."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return f"{words or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _animation_key(series: Series, n: int) -> str:
    name = f"{series.lora} {series.label}"
    return f"{REPORT}animations/{n:04d}-{_slug(name)}.webp"


def _sheets(shots: list[Shot], loras: list[str]) -> Iterator[tuple[str, Axis, Axis, dict]]:
    """One sheet per prompt and LoRA set: strengths across, seeds down. With two or more
    swept LoRAs, one sheet per seed: the first LoRA's strength across, the others' down."""
    groups: dict[tuple, list[Shot]] = defaultdict(list)
    bare: dict[tuple, list[Shot]] = defaultdict(list)  # shots with every LoRA at a plain 0
    for shot in shots:
        fixed = tuple((x.name, None if x.name in loras else x.weight, x.shape) for x in shot.loras)
        groups[(shot.text, shot.context, fixed)].append(shot)
        if not any(x.weight or x.shape for x in shot.loras):
            bare[(shot.text, shot.context)].append(shot)
    varying = _varying_context(shots)
    for (text, context, fixed), members in groups.items():
        mine = [name for name, _, _ in fixed if name in loras]
        extra = [f"{k} {v}" for k, v in context if k in varying]
        plain = [f"{n} {format_number(w)}" for n, w, _ in fixed if w is not None]
        title = " · ".join([text, *([" × ".join(mine)] if mine else []), *plain, *extra])
        seeds = sorted({s.seed for s in members})
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


def _axes(shots: list[Shot], loras: list[str]) -> list[tuple[dict, Callable[[Shot], str]]]:
    """The gallery's axes, each with how to read it off a shot: prompt, seed, each swept
    LoRA's strength, and any setting that varies."""
    rendered = [s for s in shots if s.key]
    axes: list[tuple[dict, Callable[[Shot], str]]] = []

    def add(name: str, kind: str, values: list[str], get: Callable[[Shot], str]) -> None:
        axes.append(({"name": name, "label": name, "kind": kind, "values": values}, get))

    add("prompt", "prompt", list(dict.fromkeys(s.text for s in rendered)), lambda s: s.text)
    add("seed", "seed", [str(v) for v in sorted({s.seed for s in rendered})],
        lambda s: str(s.seed))  # fmt: skip
    for lora in loras:
        values = sorted({s.weight(lora) for s in rendered})
        add(f"{lora} strength", "strength", [format_number(v) for v in values],
            lambda s, lora=lora: format_number(s.weight(lora)))  # fmt: skip
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


RESPONSE_SCHEMA = pa.schema([
    ("kind", pa.string()),  # "strength": one series at one strength; "summary": one curve
    ("lora", pa.string()), ("curve", pa.string()), ("series", pa.int32()), ("prompt", pa.string()),
    ("seed", pa.int64()), ("strength", pa.float64()), ("item_id", pa.string()),
    ("reference", pa.float64()), ("rendered", pa.bool_()), ("flags", pa.list_(pa.string())),
    ("d0_pixel", pa.float64()), ("d0_structure", pa.float64()), ("d0_changed", pa.float64()),
    ("step_pixel", pa.float64()), ("step_structure", pa.float64()),
    ("step_changed", pa.float64()), ("from_full", pa.float64()),
    ("report_flags", pa.list_(pa.string())),  # "collapsed": see docs/report.md
    ("series_count", pa.int32()), ("full", pa.float64()), ("onset", pa.float64()),
    ("knee", pa.float64()), ("break_at", pa.float64()), ("break_reason", pa.string()),
    ("recommended_low", pa.float64()), ("recommended_high", pa.float64()),
    ("monotone", pa.bool_()), ("notes", pa.string()),
])  # fmt: skip


def response_table(rows: list[dict], summaries: list[Summary]) -> bytes:
    """response.parquet: a row per series and strength, then a summary row per LoRA."""
    out = [{"kind": "strength", **r} for r in rows]
    for s in summaries:
        low, high = s.recommended or (None, None)
        out.append({
            "kind": "summary", "lora": s.lora, "curve": s.curve,
            "series_count": max((p.series for p in s.points), default=0), "full": s.full,
            "onset": s.onset, "knee": s.knee,
            "break_at": s.break_at, "break_reason": s.break_reason or None,
            "recommended_low": low, "recommended_high": high, "monotone": s.monotone,
            "notes": "; ".join(s.notes) or None,
        })  # fmt: skip
    table = pa.Table.from_pylist(out, schema=RESPONSE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
