"""A store that fills, turns read-only or refuses writes mid-job: the run stops at once
with exit 1 and one line naming the store and the cause, leaves nothing half-written that
verify would accept, and resumes once the store is fixed.

The local folder is a real tmpfs, mounted small (this needs root, as CI runs); S3 is moto,
with its answers to PutObject replaced by 403 AccessDenied or 503 SlowDown partway.
"""

from __future__ import annotations

import os
import subprocess
import threading
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import FARM, REPO
from jobrun import farm_here, wait_for_part, write_spec
from midjob import Hold

from farm.audit.verify import verify_job
from farm.cli import main
from farm.run.job import run_job
from farm.spec import load_spec
from farm.storage import open_store
from farm.storage.s3 import S3Store


@pytest.fixture
def disk(tmp_path):
    """A 256 KiB tmpfs: room for a few units of 64² images, not for the job."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    path = tmp_path / "disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], check=True,
                   timeout=30)  # fmt: skip
    yield path
    subprocess.run(["umount", "-l", str(path)], timeout=30, check=False)


def remount(path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, timeout=30)


def hidden_files(folder) -> list[str]:
    return [p.name for p in folder.rglob(".*")]


def assert_resumes_whole(job_url: str, planned: int) -> None:
    resumed = CliRunner().invoke(main, ["resume", job_url, "--local"])
    assert resumed.exit_code == 0, resumed.output
    verdict = verify_job(open_store(job_url))
    assert verdict.ok and verdict.rows == planned, verdict


@pytest.mark.slow
def test_a_local_folder_that_fills_stops_the_run_and_resume_finishes(tmp_path, tiny_dir, disk):
    spec = write_spec(tmp_path, "full", output=str(disk))  # 64 images of 64²: over 256 KiB
    proc = farm_here("run", str(spec), "--local", check=False)
    # In this process: the units stopped in flight have given up before the run returned,
    # so the resume below meets nothing of them (a LoRA half loaded, diffusers' patches).
    assert [t for t in threading.enumerate() if t.name == "farm-unit"] == []
    job = disk / "full"
    cause = f"{job}: no space left on device; make room or make it writable, then resume"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"stopped: {cause}" in proc.stdout
    assert f"job incomplete ({cause})" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    # No half-written file: the temp file of a write that failed is removed.
    assert hidden_files(job) == []
    remount(disk, "size=64m")
    assert_resumes_whole(str(job), 64)


@pytest.mark.slow
def test_a_local_folder_turned_read_only_stops_the_run_and_resume_finishes(tmp_path, tiny_dir,
                                                                           disk):  # fmt: skip
    (disk / "out").mkdir()
    spec = write_spec(tmp_path, "frozen", output=str(disk / "out"))
    job = disk / "out" / "frozen"
    hold = Hold(tmp_path / "hold", tickets=1)
    driver = subprocess.Popen([*FARM, "run", str(spec), "--local"], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, **hold.env})  # fmt: skip
    wait_for_part(job, driver)
    hold.wait_held(1, driver)
    remount(disk, "ro")
    hold.open()
    out, err = driver.communicate(timeout=300)
    cause = f"{job}: read-only file system; make room or make it writable, then resume"
    assert driver.returncode == 1, out + err
    assert f"stopped: {cause}" in out and f"job incomplete ({cause})" in err
    assert "Traceback" not in out + err
    remount(disk, "rw,size=64m")
    assert hidden_files(job) == []
    assert_resumes_whole(str(job), 64)


def refuse_puts_after(client, allowed: int, status: int, code: str):
    """From the `allowed`+1-th PutObject on, the server's answer is `status`/`code`."""
    seen = []

    def answer(params, **_):
        seen.append(params["url_path"])
        if len(seen) <= allowed:
            return None
        error = {"Code": code, "Message": code}
        return SimpleNamespace(status_code=status, headers={}), {
            "Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}  # fmt: skip

    client.meta.events.register("before-call.s3.PutObject", answer)
    return answer


@pytest.mark.parametrize(("status", "code", "said"), [
    (403, "AccessDenied", "access denied to writes (AccessDenied); give the credentials"),
    (503, "SlowDown", "the store keeps answering SlowDown (HTTP 503) to writes"),
])  # fmt: skip
def test_an_s3_store_refusing_writes_stops_the_run_and_resume_finishes(
        tmp_path, tiny_dir, s3, monkeypatch, status, code, said):  # fmt: skip
    import farm.storage.s3

    # A 503 is ridden out as an outage first (FARM_S3_OUTAGE_SECONDS); keep that short.
    monkeypatch.setattr(farm.storage.s3, "OUTAGE_SECONDS", 0.5)
    monkeypatch.setattr(farm.storage.s3, "OUTAGE_PAUSE", 0.1)
    output = s3.url(f"refused-{code}")
    spec = load_spec(write_spec(tmp_path, "refused", output=output))
    job_url = f"{output}/refused"
    client = S3Store.from_url(job_url).client  # the client farm's stores share here
    answer = refuse_puts_after(client, 12, status, code)  # job.json, the lease, some images
    try:
        result = run_job(spec, echo=lambda _: None, local=True)
    finally:
        client.meta.events.unregister("before-call.s3.PutObject", answer)
    assert not result.ok and said in result.stopped and job_url in result.stopped
    assert result.rendered < 64
    run = CliRunner().invoke(main, ["resume", job_url, "--local"])
    assert run.exit_code == 0, run.output
    assert f"; {result.already_done + result.rendered} already rendered" in run.output
    verdict = verify_job(open_store(job_url))
    assert verdict.ok and verdict.rows == 64, verdict
