"""A report of a job rendered in two halves (run, stop, resume) equals the report of the
whole job, and the second report measures only the series that changed; series measured
on other processes give the same report."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from jobrun import farm_here, write_spec

from farm.report.build import build_report
from farm.storage import open_store

LORAS = [{"name": "neon", "path": "tiny:neon", "alpha": [0, 0.5, 1]}]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tiny_dir) -> Path:
    """2 prompts × 8 seeds × neon at 0, 0.5, 1: 48 images in units of 8, each unit one
    prompt's 8 seeds at one strength."""
    folder = tmp_path_factory.mktemp("whole")
    spec = write_spec(folder, "halves", combine="product", loras=LORAS)
    farm_here("run", str(spec), "--local", "--report")
    return folder / "out" / "halves"


def report_files(job: Path) -> dict[str, bytes]:
    """The report's sheets and curves, and the gallery's index and entries (its details
    hold each row's render times, which differ between two renders of an image)."""
    report = job / "report"
    files = {p.relative_to(report).as_posix(): p.read_bytes()
             for p in [*(report / "sheets").iterdir(), *(report / "data").glob("entries-*.js"),
                       report / "data" / "index.js", report / "curves.png"]}  # fmt: skip
    return files


def response(job: Path) -> list[dict]:
    """response.parquet's rows, NaN read as None so that equal tables compare equal."""
    rows = pq.read_table(job / "report" / "response.parquet").to_pylist()
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in rows]  # fmt: skip


def test_a_report_of_two_halves_equals_the_report_of_the_whole(whole, tmp_path):
    job = tmp_path / "halves"
    shutil.copytree(whole, job, ignore=shutil.ignore_patterns("report"))
    # Stopped with the second prompt's units still to render: their parts and the
    # compacted table are gone, the first prompt's 8 series are whole.
    second_prompt = 0
    for part in (job / "parts").iterdir():
        prompts = {r["prompt"].split(" <")[0] for r in pq.read_table(part).to_pylist()}
        assert len(prompts) == 1
        if prompts == {"a blue car"}:
            part.unlink()
            second_prompt += 1
    assert second_prompt == 3  # one unit a strength
    (job / "metadata.parquet").unlink()
    first = build_report(open_store(str(job)))
    assert (first.rendered, first.series, first.measured) == (24, 16, 16)
    farm_here("resume", str(job), "--local")
    second = build_report(open_store(str(job)))
    # Only the 8 series that gained images are measured again; the other 8 are kept.
    assert (second.series, second.measured) == (16, 8)
    assert report_files(job) == report_files(whole)
    assert response(job) == response(whole)
    # Reported again unchanged: nothing is measured, nothing changes.
    third = build_report(open_store(str(job)))
    assert third.measured == 0 and report_files(job) == report_files(whole)
    assert response(job) == response(whole)


def test_series_measured_on_worker_processes_give_the_same_report(whole, tmp_path):
    job = tmp_path / "spread"
    shutil.copytree(whole, job, ignore=shutil.ignore_patterns("report"))
    report = build_report(open_store(str(job)), workers=2)
    assert report.measured == report.series == 16  # 2 prompts × 8 seeds
    assert report_files(job) == report_files(whole)
    assert response(job) == response(whole)
    assert sorted(p.name for p in (job / "report" / "animations").iterdir()) == sorted(
        p.name for p in (whole / "report" / "animations").iterdir())  # fmt: skip


def test_the_driver_holds_one_bucket_of_shots_and_the_report_is_the_same(whole, tmp_path):
    """Buckets of about 6 shots (8 buckets for 48 images): the driver never holds more than
    a few places' shots while measuring, or more than one prompt's while laying out its
    sheets, and the report is the report of one bucket."""
    job = tmp_path / "buckets"
    shutil.copytree(whole, job, ignore=shutil.ignore_patterns("report"))
    report = build_report(open_store(str(job)), bucket_shots_max=6)
    one = build_report(open_store(str(whole)), bucket_shots_max=10**6)
    assert one.peak_shots == 48 and one.peak_sheet_shots == 48
    # A place (prompt and seed) is 3 shots and a bucket holds whole places, 2 on average;
    # places are spread by a hash, so the fullest bucket holds a few more.
    assert report.peak_shots % 3 == 0 and report.peak_shots <= 48 // 3
    assert report.peak_sheet_shots == 24  # each prompt's shots: its own sheet
    assert (report.series, report.planned, report.rendered) == (16, 48, 48)

    def rows(folder: Path) -> list[tuple]:
        # Series are numbered bucket by bucket; what each measures is the same.
        kept = [{k: v for k, v in r.items() if k != "series"} for r in response(folder)]
        return sorted(repr(sorted(r.items())) for r in map(_frozen, kept))

    assert rows(job) == rows(whole)
    assert sorted(report_files(job).values()) == sorted(report_files(whole).values())


def _frozen(row: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}


def test_the_scratch_folder_is_removed_after_a_report_and_after_a_refusal(whole, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    import tempfile

    from farm.report.build import ReportError

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    job = tmp_path / "scratch"
    shutil.copytree(whole, job, ignore=shutil.ignore_patterns("report"))
    with pytest.raises(ReportError, match="--max-pixels"):
        build_report(open_store(str(job)), max_pixels=100)
    assert not (job / "report").exists() and list(scratch.iterdir()) == []
    build_report(open_store(str(job)))
    assert (job / "report" / "index.html").is_file() and list(scratch.iterdir()) == []
