"""One driver per job: a second run or resume of a job being rendered is refused with one
line naming the running driver; a lease whose driver is gone gives way (farm/run/job_lease.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import FARM, REPO
from jobrun import assert_verified, write_spec
from midjob import Hold

from farm.cli import main
from farm.run.job_lease import LEASE, STALE, holder


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return int(proc.stdout)


def lease(host: str, pid: int, heartbeat: float) -> dict:
    return {"holder": "x", "job_id": "j", "host": host, "pid": pid, "started": heartbeat,
            "heartbeat": heartbeat}  # fmt: skip


def test_a_lease_holds_while_its_driver_lives_and_beats():
    here, now = socket.gethostname(), 1_000_000.0
    # A driver on another machine: judged by its heartbeat alone.
    assert holder(lease("elsewhere", 1, now - STALE + 1), now)
    assert not holder(lease("elsewhere", 1, now - STALE - 1), now)
    # A driver on this machine: alive (this process) and beating holds; exited never does.
    assert holder(lease(here, os.getpid(), now), now)
    assert not holder(lease(here, os.getpid(), now - STALE - 1), now)
    assert not holder(lease(here, dead_pid(), now), now)
    # Not a lease farm wrote: it holds nothing.
    assert not holder({"heartbeat": now}, now)
    assert not holder(lease(here, "x", now), now)


@pytest.mark.slow
def test_a_second_run_or_resume_of_a_running_job_is_refused(tmp_path, tiny_dir):
    # Refused with one line naming the running driver, and nothing of the job rewritten.
    spec = write_spec(tmp_path, "busy", seeds={"start": 0, "count": 2})
    job = tmp_path / "out" / "busy"
    hold = Hold(tmp_path / "hold")
    first = subprocess.Popen([*FARM, "run", str(spec), "--local"], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, **hold.env})  # fmt: skip
    try:
        hold.wait_held(1, first)
        before = {p: p.read_bytes() for p in job.rglob("*") if p.is_file()}
        assert json.loads((job / LEASE).read_text())["pid"] == first.pid
        for args in (["run", str(spec), "--local"], ["resume", str(job), "--local"],
                     ["run", str(spec), "--workers", "1"]):  # fmt: skip
            refused = CliRunner().invoke(main, args)
            assert refused.exit_code == 2, refused.output
            line = refused.output.strip()
            assert "\n" not in line
            assert "job busy is already being rendered by the driver " in line
            assert f"{socket.gethostname()}:{first.pid}" in line
            assert {p: p.read_bytes() for p in job.rglob("*") if p.is_file()} == before
    finally:
        hold.open()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert not (job / LEASE).exists()
    assert_verified(job, 16)


@pytest.mark.parametrize("gone", ["exited here", "silent elsewhere"])
def test_a_lease_whose_driver_is_gone_is_taken_over(tmp_path, tiny_dir, gone):
    spec = write_spec(tmp_path, "orphan", seeds={"start": 0, "count": 1})
    job = tmp_path / "out" / "orphan"
    job.mkdir(parents=True)
    if gone == "exited here":  # a killed driver on this machine: resumable at once
        planted = lease(socket.gethostname(), dead_pid(), time.time())
    else:  # a driver on another machine that stopped beating
        planted = lease("elsewhere", 1, time.time() - STALE - 60)
    (job / LEASE).write_text(json.dumps(planted))
    result = CliRunner().invoke(main, ["run", str(spec), "--local"])
    assert result.exit_code == 0, result.output
    assert not (job / LEASE).exists()
    assert_verified(job, 8)


def test_a_fresh_lease_from_another_machine_is_refused(tmp_path):
    spec = write_spec(tmp_path, "remote", seeds={"start": 0, "count": 1})
    job = tmp_path / "out" / "remote"
    job.mkdir(parents=True)
    (job / LEASE).write_text(json.dumps(lease("render-07", 4242, time.time())))
    refused = CliRunner().invoke(main, ["run", str(spec), "--local"])
    assert refused.exit_code == 2
    assert "already being rendered by the driver render-07:4242" in refused.output
    assert sorted(p.name for p in job.iterdir()) == [LEASE]
