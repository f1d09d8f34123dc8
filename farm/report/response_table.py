"""response.parquet: the report's measurements, one table of several row kinds."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from farm.report.response import Summary
from farm.report.runs import RunComparison

RESPONSE_SCHEMA = pa.schema([
    # "strength": one series at one strength; "point": one curve at one strength, over its
    # series; "summary": one curve; "recommendation": one training run's checkpoint to ship
    ("kind", pa.string()),
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
    # Consistency: the coefficient of variation of d0_pixel across a curve's series.
    ("spread", pa.float64()),
    # A training run's checkpoint: the run, its file, step and epoch, and how it compares.
    ("run", pa.string()), ("checkpoint_file", pa.string()), ("step", pa.int64()),
    ("epoch", pa.int64()), ("effect_full", pa.float64()), ("spread_full", pa.float64()),
    ("likeness", pa.float64()), ("eligible", pa.bool_()), ("why_not", pa.string()),
    # A checkpoint's image at full strength: its pixel distance from the run's last
    # checkpoint's image of the same prompt, seed and settings.
    ("to_last", pa.float64()),
])  # fmt: skip


class ResponseWriter:
    """response.parquet written as it is measured: the series' rows a batch at a time,
    then the rows of the curves and runs, which need every series."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = pq.ParquetWriter(path, RESPONSE_SCHEMA, compression="zstd")

    def add(self, rows: list[dict]) -> None:
        if rows:
            out = [{"kind": "strength", **r} for r in rows]
            self._writer.write_table(pa.Table.from_pylist(out, schema=RESPONSE_SCHEMA))

    def finish(self, summaries: list[Summary], runs: list[RunComparison]) -> None:
        """The rows of the curves and runs, after every series'; `close` ends the file."""
        self._writer.write_table(pa.Table.from_pylist(curve_rows(summaries, runs),
                                                      schema=RESPONSE_SCHEMA))  # fmt: skip

    def close(self) -> None:
        self._writer.close()


def curve_rows(summaries: list[Summary], runs: list[RunComparison] = ()) -> list[dict]:
    """The rows after the series': a point per curve and strength, a summary per curve, a
    recommendation per training run."""
    out: list[dict] = []
    candidates = {(c.summary.lora, c.summary.curve): (run, c) for run in runs
                  for c in run.candidates}  # fmt: skip
    for s in summaries:
        out += [{"kind": "point", "lora": s.lora, "curve": s.curve, "strength": p.strength,
                 "series_count": p.series, "d0_pixel": p.pixel, "d0_structure": p.structure,
                 "d0_changed": p.changed, "step_pixel": p.step_pixel, "from_full": p.from_full,
                 "spread": p.spread} for p in s.points]  # fmt: skip
    for s in summaries:
        low, high = s.recommended or (None, None)
        row = {
            "kind": "summary", "lora": s.lora, "curve": s.curve,
            "series_count": max((p.series for p in s.points), default=0), "full": s.full,
            "onset": s.onset, "knee": s.knee,
            "break_at": s.break_at, "break_reason": s.break_reason or None,
            "recommended_low": low, "recommended_high": high, "monotone": s.monotone,
            "notes": "; ".join(s.notes) or None,
        }  # fmt: skip
        if (s.lora, s.curve) in candidates:
            run, c = candidates[(s.lora, s.curve)]
            row |= _checkpoint_columns(run, c) | {"eligible": not c.why_not,
                                                  "why_not": c.why_not or None}  # fmt: skip
        out.append(row)
    for run in runs:
        row = {"kind": "recommendation", "run": run.run, "curve": run.title, "notes": run.reason}
        if run.chosen is not None:
            c = run.chosen
            low, high = c.summary.recommended
            row |= _checkpoint_columns(run, c) | {
                "lora": c.name, "curve": c.summary.curve, "recommended_low": low,
                "recommended_high": high, "onset": c.summary.onset, "knee": c.summary.knee,
                "break_at": c.summary.break_at}  # fmt: skip
        out.append(row)
    return out


def _checkpoint_columns(run: RunComparison, c) -> dict:
    return {"run": run.run, "checkpoint_file": c.file, "step": c.place.step,
            "epoch": c.place.epoch, "effect_full": c.effect, "spread_full": c.spread,
            "likeness": c.likeness}  # fmt: skip
