"""`farm run` end to end through the CLI on a local Ray with 2 workers."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import FARM, REPO

from farm.loras.demo import demo_lora_path
from farm.loras.files import inspect_lora
from farm.records.encode import read_infotext
from farm.records.infotext import parse_infotext

EXAMPLE = REPO / "jobs" / "examples" / "neon-sweep.yaml"


def farm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FARM, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"farm {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def neon_job(tmp_path_factory, tiny_dir) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("renders")
    proc = farm("run", str(EXAMPLE), "--output", str(out), "--workers", "2")
    return out / "neon-sweep", proc


@pytest.mark.slow
def test_run_renders_every_planned_item(neon_job, farm_home):
    job, proc = neon_job
    planned = json.loads(farm("plan", str(EXAMPLE), "--json").stdout)
    assert planned["items"] == 48
    assert "on 2 workers" in proc.stdout
    assert f"images:   {job}/images/" in proc.stdout

    images = sorted((job / "images").glob("*.png"))
    table = pq.ParquetFile(job / "metadata.parquet").read()
    assert len(images) == planned["items"] == table.num_rows
    assert len({p.stem for p in images}) == len(set(table.column("item_id").to_pylist()))
    assert len(list((job / "parts").glob("*.parquet"))) == planned["units"]

    neon = inspect_lora(demo_lora_path("tiny:neon"))
    strengths = set()
    for row in table.to_pylist():
        data = (job / row["image_key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
        assert row["file_name"] == row["image_key"]
        info = parse_infotext(read_infotext(data))
        assert info == parse_infotext(row["infotext"])
        assert info["Steps"] == "20" and info["Seed"] == str(row["seed"])
        assert (info["width"], info["height"]) == (128, 128)
        assert info["Lora hashes"] == {"neon": neon.shorthash}
        assert info["prompt"] == row["prompt"] and "<lora:neon:" in row["prompt"]
        # The tiny model's guidance base is the empty prompt it was trained with.
        assert info["negative_prompt"] == "" and "Negative prompt:" not in row["infotext"]
        assert row["loras"][0]["sha256"] == neon.sha256
        strengths.add(row["alpha"])
    assert strengths == {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}

    doc = json.loads((job / "job.json").read_text())
    assert doc["status"] == "done" and doc["rows"] == 48
    counters = doc["runs"][0]["counters"]
    assert counters["workers"] == 2 and sum(counters["images_per_worker"]) == 48


@pytest.mark.slow
def test_second_run_renders_nothing_and_verify_passes(neon_job):
    job, _ = neon_job
    before = {p: p.stat().st_mtime_ns for p in (job / "images").iterdir()}
    again = farm("run", str(EXAMPLE), "--output", str(job.parent))
    assert "48 already rendered" in again.stdout
    assert "nothing to render" in again.stdout
    assert before == {p: p.stat().st_mtime_ns for p in (job / "images").iterdir()}
    verified = farm("verify", str(job))
    assert "ok: 48 planned items, 48 rows, 48 images" in verified.stdout
    status = json.loads(farm("status", str(job), "--json").stdout)
    assert status["rendered"] == status["planned"] == 48 and status["status"] == "done"


@pytest.mark.slow
def test_verify_names_a_damaged_image_and_a_missing_part(neon_job, tmp_path):
    import shutil

    job, _ = neon_job
    copy = tmp_path / "neon-sweep"
    shutil.copytree(job, copy)
    part = sorted((copy / "parts").glob("*.parquet"))[0]
    rows = pq.ParquetFile(copy / "metadata.parquet").read().to_pylist()
    kept = next(r for r in rows if r["unit_id"] != part.stem)
    damaged = copy / kept["image_key"]
    damaged.write_bytes(damaged.read_bytes()[:-10])
    part.unlink()
    proc = farm("verify", str(copy), check=False)
    assert proc.returncode == 1
    assert f"images/{damaged.name}: sha256" in proc.stdout
    assert "8 planned items have no row" in proc.stdout
