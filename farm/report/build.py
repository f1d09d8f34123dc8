"""`farm report`: everything under {job}/report/, written through the job's store.

The report reads the job's rows once into buckets on the local disk (farm/report/census.py)
and then works a bucket at a time, so the driver's memory does not grow with the number of
images: it holds one bucket of shots (the images of a few prompt, settings and seed places),
one prompt's sheets, and per-strength sums for each curve. Images are read only by tasks
(farm/report/tasks.py): a series, a sheet, or a few checkpoint pairs each.

  1. census: each shot to its bucket, and the job-wide facts (swept LoRAs, axis values)
  2. sheets: each prompt's sheets laid out, so a bad --max-pixels is refused before
     anything is written
  3. measure: each bucket's series as tasks; their rows kept on disk, the curves summed
  4. settle: collapsed marks, a training run's likeness, response.parquet's rows and the
     gallery's entries, bucket by bucket
  5. draw the sheets and write the gallery
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from farm.errors import FarmError
from farm.report.census import Census, Facts, bucket_details, bucket_shots, gather
from farm.report.curves import curves_png
from farm.report.gallery import write_gallery
from farm.report.gallery_axes import gallery_axes, gallery_entry
from farm.report.key_set import KeySet
from farm.report.response import (
    CurveSums,
    RunningMean,
    Summary,
    add_span,
    collapsed,
    summarize_points,
)
from farm.report.response_table import ResponseWriter
from farm.report.run_pairs import RunPairs
from farm.report.runs import Place, RunComparison, compare_runs, run_places
from farm.report.series import Series, series_of
from farm.report.series_tasks import (
    SERIES_CACHE,
    SeriesJob,
    kept_results,
    measure_all,
)
from farm.report.sheet_sets import SeedBlocks, draw_sheet, sheet_cell, sheet_name, sheets_of
from farm.report.sheets import DEFAULT_MAX_PIXELS, layout
from farm.report.spill import shot_json, shot_of
from farm.report.tasks import TaskRunner
from farm.storage.store import Store

REPORT = "report/"
RESPONSE = f"{REPORT}response.parquet"
CURVES = f"{REPORT}curves.png"
INDEX = f"{REPORT}index.html"
# Bucket families on the local disk, besides the census' shots and details.
ROWS, SHEETS, MARKS, ENTRIES = "rows", "sheets", "marks", "entries"
# Sheets handed to the tasks at once, and their cells, held until they are drawn.
SHEETS_PER_BATCH = 64
CELLS_PER_BATCH = 8000


class ReportError(FarmError, ValueError):
    """A report that cannot be drawn as asked; str() says what to change."""


@dataclass
class Report:
    job_id: str
    planned: int
    rendered: int
    summaries: list[Summary]
    sheets: int = 0  # contact sheet pages
    animations: int = 0
    notes: list[str] = field(default_factory=list)
    collapsed: int = 0  # images the report marked collapsed
    series: int = 0  # series measured in all
    measured: int = 0  # of those, measured by this report (the rest were kept)
    runs: list[RunComparison] = field(default_factory=list)  # training runs compared
    # The most shots the driver held at once: one bucket's, while measuring and settling
    # series, and one prompt's (with its settings), while laying out its sheets.
    peak_shots: int = 0
    peak_sheet_shots: int = 0


def build_report(store: Store, *, max_pixels: int = DEFAULT_MAX_PIXELS, cell_px: int = 256,
                 echo: Callable[[str], None] = lambda _: None, workers: int | None = None,
                 address: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 bucket_shots_max: int | None = None) -> Report:  # fmt: skip
    """Write the job's report and return what it found. Safe to rerun: the same job gives
    the same keys, and files a rerun no longer writes are removed.

    Series are measured as tasks: on the Ray cluster at `address`, else on `workers`
    processes here (default: one per core); `progress(done, total)` counts their images.
    A series measured by an earlier report, with the same images, is not measured again.
    `bucket_shots_max` sets how many shots a bucket aims at (farm/report/spill.py)."""
    census = gather(store, per_bucket=bucket_shots_max)
    with census.spill:
        return _Build(store, census, cell_px, echo).run(max_pixels, workers, address, progress)


class _Build:
    """One report's passes over the buckets, and what they carry from one to the next."""

    def __init__(self, store: Store, census: Census, cell_px: int, echo) -> None:
        self.store, self.census, self.spill = store, census, census.spill
        self.cell_px, self.echo = cell_px, echo
        facts: Facts = census.facts
        loras = facts.swept
        self.places = {n: p for n, p in run_places(census.doc).items() if n in loras}
        self.loras = _training_order(loras, self.places)
        self.report = Report(census.doc["job_id"], 0, 0, [])
        self.blocks = SeedBlocks(facts.all_seeds, facts.prompt_shots, census.per_bucket)
        self.curves: dict[tuple[str, str], CurveSums] = {}
        self.written = KeySet()
        self.spans: dict[str, RunningMean] = {}

    def wrote(self, key: str) -> None:
        """Count a file this report leaves, and remember it for the cleanup."""
        self.written.add(key)
        self.report.sheets += key.startswith(f"{REPORT}sheets/")
        self.report.animations += key.startswith(f"{REPORT}animations/")

    def put(self, key: str, data: bytes) -> None:
        self.store.put(key, data)
        self.wrote(key)

    def shots(self, bucket: int) -> list:
        shots = bucket_shots(self.spill, bucket)
        self.report.peak_shots = max(self.report.peak_shots, len(shots))
        return shots

    def run(self, max_pixels: int, workers, address, progress) -> Report:
        self.lay_out_sheets(max_pixels)
        with TaskRunner(workers, address) as self.runner:
            return self._run(max_pixels, progress)

    def _run(self, max_pixels: int, progress) -> Report:
        report = self.report
        self.measure(progress)
        report.notes = _notes(self.census, report)
        report.summaries = [summarize_points(lora, sums.points(), curve)
                            for (lora, curve), sums in sorted(self.curves.items(),
                                                              key=self._curve_order)]  # fmt: skip
        pairs = RunPairs(compare_runs(report.summaries, self.places))
        response = ResponseWriter(self.spill.root / "response.parquet")
        try:
            spans = {c: m.value() for c, m in self.spans.items() if m.n}
            self.settle(spans, pairs, response)
            report.runs = compare_runs(report.summaries, self.places, pairs.apart)
            response.finish(report.summaries, report.runs)
        finally:
            response.close()
        self.put(RESPONSE, response.path.read_bytes())
        self.put(CURVES, curves_png(report.summaries, report.runs))
        self.echo("drawing contact sheets")
        self.draw_sheets(max_pixels)
        self.echo("writing the gallery")
        self.write_gallery()
        stale = [key for key in self.store.list(REPORT) if key not in self.written]
        for key in stale:  # left by an earlier report of this job
            self.store.delete(key)
        return report

    def _curve_order(self, item) -> tuple[int, str]:
        (lora, curve), _ = item
        return self.loras.index(lora), curve

    # 2. sheets ---------------------------------------------------------------------------

    def lay_out_sheets(self, max_pixels: int) -> None:
        """Spread the shots to sheet buckets (a few blocks of a prompt's seeds each) and lay out
        every sheet. A cap too small for one cell is a bad flag, refused with the job's
        report folder untouched."""
        for b in range(self.spill.buckets):
            for shot in self.shots(b):
                self.spill.add(SHEETS, self.blocks.bucket(shot), shot_json(shot))
        self.spill.flush()
        for _, rows_axis, cols_axis, _ in self._sheets():
            try:
                layout(rows_axis, cols_axis, self.cell_px, max_pixels)
            except ValueError as err:
                raise ReportError(f"--max-pixels: {err}") from None

    def _sheets(self, marks: Callable[[int], dict] | None = None):
        varying = self.census.facts.varying()
        for b in range(self.blocks.buckets):
            shots = [shot_of(v) for v in self.spill.read(SHEETS, b)]
            self.report.peak_sheet_shots = max(self.report.peak_sheet_shots, len(shots))
            at = marks(b) if marks else {}
            for title, rows_axis, cols_axis, cells in sheets_of(shots, self.loras, self.places,
                                                                varying, self.blocks):  # fmt: skip
                yield title, rows_axis, cols_axis, {pos: sheet_cell(shot, at)
                                                    for pos, shot in cells.items()}  # fmt: skip

    def draw_sheets(self, max_pixels: int) -> None:
        """Draw every sheet as a task, a sheet bucket's sheets at a time."""

        def marks(b: int) -> dict[str, list[str]]:
            return dict(self.spill.read(MARKS, b))

        calls: list[tuple] = []
        held = 0  # cells in `calls`

        def draw() -> None:
            nonlocal held
            for _, keys in self.runner.run(draw_sheet, calls):
                for key in keys:  # type: ignore[attr-defined]
                    self.wrote(key)
            calls.clear()
            held = 0

        for n, (title, rows_axis, cols_axis, cells) in enumerate(self._sheets(marks)):
            name = f"{REPORT}sheets/{n:03d}-{_slug(sheet_name(title))}"
            calls.append((self.store.url, name, title, rows_axis, cols_axis, cells, max_pixels,
                          self.cell_px))  # fmt: skip
            held += len(cells)
            if len(calls) >= SHEETS_PER_BATCH or held >= CELLS_PER_BATCH:
                draw()
        draw()

    # 3. measure --------------------------------------------------------------------------

    def measure(self, progress) -> None:
        """Measure each bucket's series as tasks; keep their rows on disk and add them to
        their curves' sums."""
        report, store = self.report, self.store
        kept = kept_results(store)
        total = max(1, int(self.census.doc["plan"]["items"]))
        done = 0
        self.echo(f"measuring {', '.join(self.loras) or 'no swept LoRA'}")
        for b in range(self.spill.buckets):
            shots = self.shots(b)
            report.planned += len(shots)
            report.rendered += sum(1 for s in shots if s.key)
            jobs = [SeriesJob(one, _animation_key(one, report.series + i), lora)
                    for i, (lora, one) in enumerate(self._series(shots))]  # fmt: skip

            def count(series_done: int, series_all: int, base=done, n=shots) -> None:
                if progress:
                    progress(min(total, base + len(n) * series_done // series_all), total)

            results: list[dict] = [{}] * len(jobs)
            for i, result, computed in measure_all(store, jobs, self.cell_px, self.runner,
                                                   kept, progress=count):  # fmt: skip
                results[i] = result
                report.measured += computed
                self.wrote(f"{SERIES_CACHE}{jobs[i].key}-{self.cell_px}.json")
                if result["animation"]:
                    self.wrote(result["animation"])
            for job, result in zip(jobs, results, strict=True):
                self._add_series(b, job, result["rows"])
            done += len(shots)
            if progress:
                progress(min(total, done), total)
        self.spill.flush()

    def _series(self, shots: list) -> list[tuple[str, Series]]:
        return [(lora, one) for lora in self.loras for one in series_of(shots, lora)]

    def _add_series(self, bucket: int, job: SeriesJob, rows: list[dict]) -> None:
        one = job.series
        n = self.report.series
        self.report.series += 1
        from_zero = one.shots[0][0] == 0.0
        # A curve averages only series that start at strength 0: a blend swept from
        # 0.5 up measures from 0.5, which would drag another series' curve off zero.
        sums = self.curves.setdefault((job.caption, one.curve), CurveSums()) if from_zero else None
        for r in rows:
            r["series"], r["curve"] = n, one.curve
            if sums is not None:
                sums.add(r)
            add_span(self.spans, r)
        # What the series holds fixed besides its LoRA's strength, by which the series of
        # two checkpoints of a run are paired.
        place = json.dumps([one.text, one.seed, one.fixed[0]], ensure_ascii=False)
        self.spill.add(ROWS, bucket, [job.caption, from_zero, place, rows])

    # 4. settle ---------------------------------------------------------------------------

    def settle(self, spans: dict[str, float], pairs: RunPairs, response: ResponseWriter) -> None:
        """Bucket by bucket: mark collapsed images, measure each checkpoint against its
        run's last, write the series' rows to response.parquet and the gallery's entries."""
        axes = gallery_axes(self.census.facts, self.loras, self.places)
        self.axes = [a for a, _ in axes]
        for b in range(self.spill.buckets):
            shots = {s.item_id: s for s in self.shots(b)}
            series = list(self.spill.read(ROWS, b))
            marks = _mark_collapsed([rows for *_, rows in series], spans)
            self.report.collapsed += len(marks)
            pairs.add(series, {i: s.key for i, s in shots.items()}, self.store.url, self.runner)
            response.add([r for *_, rows in series for r in rows])
            d0: dict[str, float] = {}
            for *_, rows in series:
                for r in rows:
                    if not math.isnan(r["d0_pixel"]):
                        d0.setdefault(r["item_id"], r["d0_pixel"])
            for item_id, found in marks.items():
                self.spill.add(MARKS, self.blocks.bucket(shots[item_id]), [item_id, found])
            for item_id, infotext, row in bucket_details(self.spill, b):
                shot = shots[item_id]
                entry = gallery_entry(shot, axes, d0.get(item_id), marks.get(item_id, []),
                                      infotext, row)  # fmt: skip
                self.spill.add(ENTRIES, b, entry)
        self.spill.flush()

    # 5. the gallery ----------------------------------------------------------------------

    def write_gallery(self) -> None:
        entries = (e for b in range(self.spill.buckets) for e in self.spill.read(ENTRIES, b))
        write_gallery(entries, lambda name, data: self.put(f"{REPORT}{name}", data),
                      title=f"farm report: {self.report.job_id}", axes=self.axes,
                      notes=self.report.notes,
                      headlines=[run.sentence() for run in self.report.runs])  # fmt: skip


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


def _notes(census: Census, report: Report) -> list[str]:
    notes = []
    missing = report.planned - report.rendered
    if missing:
        status = census.doc.get("status") or "not finished"
        notes.append(f"{missing} of {report.planned} planned images are missing (job status: "
                     f"{status}); they show as missing on the sheets. Run `farm resume` to "
                     "render them, then `farm report` again.")  # fmt: skip
    for key in census.corrupt_parts:
        notes.append(f"{key}: unreadable part, its images are counted as missing")
    return notes


def _slug(text: str) -> str:
    """A safe file name part for any user text: ASCII words, plus a hash so it is unique."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return f"{words or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _animation_key(series: Series, n: int) -> str:
    name = f"{series.lora} {series.label}"
    return f"{REPORT}animations/{n:04d}-{_slug(name)}.webp"
