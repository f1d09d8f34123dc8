"""`farm run --local`: the executor's loop with its worker in the driver's process, no Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import REPO
from jobrun import assert_verified, job_doc, write_spec

from farm.cli import main

# `farm` as a user runs it, then whether Ray was ever imported in that process.
RUN_AND_SAY = """
import sys
from farm.cli import main
try:
    main.main(sys.argv[1:], prog_name="farm")
except SystemExit as exit:
    code = exit.code
print("RAY-IMPORTED" if "ray" in sys.modules else "NO-RAY", code)
"""


def farm_here(*args: str) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-c", RUN_AND_SAY, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    said, code = proc.stdout.strip().splitlines()[-1].split()
    return proc.stdout + proc.stderr, (said, int(code))


def test_a_local_run_renders_resumes_and_verifies_without_ray(tmp_path, tiny_dir):
    spec = write_spec(tmp_path, "here", seeds={"start": 0, "count": 2})  # 16 items, 2 units
    out, ended = farm_here("run", str(spec), "--local")
    assert ended == ("NO-RAY", 0), out
    assert "on 1 worker (in this process, no Ray" in out
    job = tmp_path / "out" / "here"
    doc = job_doc(job)
    assert doc["status"] == "done" and doc["runs"][0]["rendered"] == 16
    assert_verified(job, 16)
    # The job is the same job on Ray or here: a local resume finds nothing left.
    out, ended = farm_here("resume", str(job), "--local")
    assert ended == ("NO-RAY", 0), out
    assert "nothing to render" in out


@pytest.mark.parametrize("flag", [["--workers", "2"], ["--address", "127.0.0.1:6379"],
                                  ["--gpus-per-worker", "1"]])  # fmt: skip
@pytest.mark.parametrize("command", ["run", "resume"])
def test_local_refuses_flags_that_place_workers_elsewhere(tmp_path, flag, command):
    spec = write_spec(tmp_path, "refused")
    target = str(spec) if command == "run" else str(tmp_path / "out" / "refused")
    result = CliRunner().invoke(main, [command, target, "--local", *flag])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith(f"error: {flag[0]}: --local renders with one")
    assert not (tmp_path / "out").exists()


def test_local_rows_name_this_process_as_the_worker(tmp_path, tiny_dir):
    import os

    import pyarrow.parquet as pq

    from farm.run.job import run_job
    from farm.spec import load_spec

    spec = load_spec(write_spec(tmp_path, "rows", seeds={"start": 0, "count": 1}))
    result = run_job(spec, echo=lambda _: None, local=True)
    assert result.ok and result.rendered == 8
    rows = pq.read_table(tmp_path / "out" / "rows" / "metadata.parquet").to_pylist()
    assert {r["worker"].rsplit(":", 1)[1] for r in rows} == {str(os.getpid())}
    assert json.loads((tmp_path / "out" / "rows" / "job.json").read_text())["status"] == "done"


def test_a_worker_of_another_farm_version_is_refused(tmp_path, tiny_dir, monkeypatch):
    """The driver refuses a worker whose farm differs (its classes, ids and pixels may too):
    the run stops before any unit, resumable, naming both versions."""
    from farm import __version__
    from farm.run.job import run_job
    from farm.spec import load_spec
    from farm.worker import render_worker

    monkeypatch.setattr(render_worker, "__version__", "0.0.1")
    spec = load_spec(write_spec(tmp_path, "mixed", seeds={"start": 0, "count": 1}))
    said: list[str] = []
    result = run_job(spec, echo=said.append, local=True)
    assert not result.ok and result.rendered == 0
    assert result.stopped == (
        f"worker {socket.gethostname()}:{os.getpid()} runs farm 0.0.1, this "
        f"driver farm {__version__}; install one farm version on every node, then resume"
    )
    assert f"stopped: {result.stopped}" in said
    assert not (tmp_path / "out" / "mixed" / "parts").exists()
