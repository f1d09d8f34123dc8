"""Presets from a measured sweep: subtle just past a LoRA's onset, standard at its knee,
bold at the last measured strength below its break (docs/report.md defines all three).
A training run's presets are those of the checkpoint the report recommends.

Reads the summary and recommendation rows of `report/response.parquet`, which `farm report`
writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from farm.report.build import RESPONSE, ReportError
from farm.storage.store import Store

TIERS = ("subtle", "standard", "bold")


@dataclass
class Suggestion:
    lora: str
    series: int
    onset: float
    knee: float
    break_at: float | None
    break_reason: str
    measured: list[float]
    weights: dict[str, float]  # tier -> strength
    why: dict[str, str]  # tier -> which measurement it comes from
    curve: str = ""  # the curve it rests on: the LoRA, or the LoRA with its companions
    run: str | None = None  # the training run it is the recommended checkpoint of
    checkpoint_file: str | None = None
    step: int | None = None


def suggest_presets(store: Store, lora: str | None = None) -> list[Suggestion]:
    """One suggestion per LoRA swept alone from 0 (or just `lora`); ReportError if the
    job has no response analysis or a LoRA shows no onset and knee to build on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not store.exists(RESPONSE):
        raise ReportError(f"{store.url}: no response analysis ({RESPONSE}); run "
                          f"`farm report {store.url}` first")  # fmt: skip
    try:
        # No reader threads: they can abort the interpreter at exit (farm/records/parts.py).
        parquet = pq.ParquetFile(pa.BufferReader(store.get(RESPONSE)), pre_buffer=False)
        rows = parquet.read(use_threads=False).to_pylist()
    except Exception as err:  # noqa: BLE001 - any damage reads as one message
        raise ReportError(f"{store.url}/{RESPONSE}: unreadable ({err}); run `farm report` "
                          "again to rewrite it") from None  # fmt: skip
    targets = _targets(rows)
    if lora is not None and lora not in targets:
        known = ", ".join(sorted(targets)) or "none"
        raise ReportError(f"--lora {lora}: the job's response has no curve of {lora} swept "
                          f"alone (curves: {known})")  # fmt: skip
    out = []
    for name in [lora] if lora else sorted(targets):
        s, rec = targets[name]
        if s is None:  # a run of which no checkpoint could be recommended
            if lora is None:
                continue
            raise ReportError(f"--lora {lora}: no checkpoint of the run is recommended "
                              f"({rec.get('notes')}); see `farm report`")  # fmt: skip
        curve = s["curve"]
        measured = sorted({r["strength"] for r in rows
                           if r.get("kind") == "strength" and r.get("curve") == curve})  # fmt: skip
        found = _suggest(s["lora"], s, measured)
        found.curve = s["curve"]
        if rec is not None:
            found.run, found.checkpoint_file = rec["run"], rec["checkpoint_file"]
            found.step = rec.get("step")
        out.append(found)
    if not out:
        raise ReportError(f"{store.url}: no LoRA is swept alone from 0, so there is no "
                          "response to build presets on")  # fmt: skip
    return out


def _targets(rows: list[dict]) -> dict[str, tuple[dict | None, dict | None]]:
    """What presets can be built on, by the name --lora takes: each LoRA swept alone from 0
    (with companions at one fixed strength, where that is its only curve), and each training
    run, by the curve of its recommended checkpoint (None where none is recommended)."""
    summaries = [r for r in rows if r.get("kind") == "summary"]
    by_curve = {r["curve"]: r for r in summaries}
    targets: dict[str, tuple[dict | None, dict | None]] = {}
    for rec in (r for r in rows if r.get("kind") == "recommendation"):
        chosen = by_curve.get(rec["curve"]) if rec.get("lora") else None
        if chosen is not None or rec["run"] not in targets:
            targets[rec["run"]] = (chosen, rec)
    curves: dict[str, list[dict]] = {}
    for r in summaries:
        if r.get("run") is None:
            curves.setdefault(r["lora"], []).append(r)
    for name, found in curves.items():
        alone = [r for r in found if r["curve"] == name]
        if alone or len(found) == 1:
            targets.setdefault(name, ((alone or found)[0], None))
    return targets


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _suggest(name: str, s: dict, measured: list[float]) -> Suggestion:
    onset, knee, brk = _num(s.get("onset")), _num(s.get("knee")), _num(s.get("break_at"))
    high = _num(s.get("recommended_high"))
    if onset is None or knee is None:
        raise ReportError(f"{name}: the sweep shows no onset or knee (its effect never "
                          "reaches half of full strength's); sweep higher strengths")  # fmt: skip
    below = [m for m in measured if m > knee and (brk is None or m < brk)]
    bold = high if high is not None and high > knee else (max(below) if below else None)
    if bold is None:
        raise ReportError(f"{name}: no measured strength lies between the knee ({knee:g}) and "
                          "the break; sweep more strengths there")  # fmt: skip
    past = [m for m in measured if onset < m < knee]
    subtle = past[0] if past else round((onset + knee) / 2, 3)
    weights = {"subtle": subtle, "standard": round(knee, 3), "bold": bold}
    why = {
        "subtle": (
            f"the first measured strength past the onset ({onset:g})"
            if past
            else f"half-way from the onset ({onset:g}) to the knee"
        ),  # fmt: skip
        "standard": f"the knee: half of full strength's effect ({knee:g})",
        "bold": (
            "the last measured strength below the break "
            f"({brk:g}: {s.get('break_reason') or 'see the report'})"
            if brk is not None
            else "the highest measured strength (no break was found)"
        ),  # fmt: skip
    }
    return Suggestion(name, int(s.get("series_count") or 0), onset, knee, brk,
                      s.get("break_reason") or "", measured, weights, why)  # fmt: skip


def presets_yaml(suggestions: list[Suggestion], job_url: str) -> str:
    """A `presets:` block for tenants.yaml, with the measurements it rests on as comments."""
    single = len(suggestions) == 1
    lines = [f"# suggested by `farm presets suggest {job_url}` from the measured response"]
    for sg in suggestions:
        strengths = ", ".join(f"{m:g}" for m in sg.measured)
        if sg.run is not None:
            at = f", step {sg.step}" if sg.step is not None else ""
            lines.append(f"# {sg.run}: the training run's recommended checkpoint is "
                         f"{sg.checkpoint_file}{at}; register that file as {sg.lora}")  # fmt: skip
        if sg.curve and sg.curve != sg.lora:
            lines.append(f"# {sg.lora}: measured as {sg.curve}")
        brk = f"{sg.break_at:g} ({sg.break_reason})" if sg.break_at is not None else "none"
        lines.append(f"# {sg.lora}: {sg.series} series; onset {sg.onset:g}, knee {sg.knee:g}, "
                     f"break {brk}; measured at {strengths}")  # fmt: skip
    lines.append("presets:")
    for sg in suggestions:
        for tier in TIERS:
            name = tier if single else f"{sg.lora}-{tier}"
            lines.append(f"  {name}: {{lora: {sg.lora}, weight: {sg.weights[tier]:g}, "
                         f"description: {_quote(sg.why[tier])}}}")  # fmt: skip
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
