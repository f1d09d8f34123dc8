"""Jobs on S3 (moto's server over real HTTP): end to end, killed drivers, outages, damage."""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from jobrun import farm, farm_here
from s3server import free_port, start_moto

from farm.storage.s3 import S3Store

pytestmark = pytest.mark.slow


def keys(s3, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def small_spec(tmp_path: Path, job: str = "small", seeds: int = 4) -> str:
    spec = {
        "job": job,
        "prompts": ["neon city", "a red car"],
        "seeds": {"start": 0, "count": seeds},
        "loras": [{"name": "neon", "path": "tiny:neon", "alpha": [0, 1]}],
        "render": {"steps": 4, "width": 64, "height": 64, "batch": 8},  # units of 8
    }
    path = tmp_path / f"{job}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def rendered(proc: subprocess.CompletedProcess) -> int:
    match = re.search(r"rendered (\d+) images", proc.stdout)
    return int(match[1]) if match else 0


# The example's shape (48 items in 6 units) at 64², 4 steps: these tests are about the
# store, not the example, which test_cli_run renders in full.
@pytest.fixture(scope="module")
def sweep48(tmp_path_factory) -> str:
    return small_spec(tmp_path_factory.mktemp("spec"), "neon-sweep", seeds=12)


def ray_sessions() -> set[Path]:
    """Ray's session folders on this machine, where Ray itself puts them."""
    from ray._common.utils import get_default_ray_temp_dir

    return set(Path(get_default_ray_temp_dir()).glob("session_2*"))


@pytest.fixture(scope="module")
def s3_job(s3, tiny_dir, sweep48):
    before = ray_sessions()
    proc = farm("run", sweep48, "--output", s3.url("e2e"), "--workers", "1")
    # The run's own session, among any that other processes started meanwhile.
    return s3.url("e2e/neon-sweep"), proc, ray_sessions() - before


def test_run_to_s3_writes_the_job_layout_and_verifies(s3, s3_job, sweep48):
    job_url, proc, _ = s3_job
    found = keys(s3, "e2e/neon-sweep/")
    assert sum("/images/" in k for k in found) == 48
    assert sum("/parts/" in k for k in found) == 6
    assert {"e2e/neon-sweep/job.json", "e2e/neon-sweep/metadata.parquet"} <= set(found)
    assert f"images:   {job_url}/images/" in proc.stdout
    assert "ok: 48 planned items, 48 rows, 48 images" in farm("verify", job_url).stdout
    body = s3.client().get_object(Bucket=s3.bucket, Key="e2e/neon-sweep/metadata.parquet")
    table = pq.ParquetFile(io.BytesIO(body["Body"].read())).read()
    assert table.num_rows == 48 and len(set(table.column("item_id").to_pylist())) == 48
    again = farm("run", sweep48, "--output", s3.url("e2e"))
    assert "nothing to render" in again.stdout


def test_no_credential_in_outputs_or_logs(s3, s3_job):
    _, proc, sessions = s3_job
    texts = [proc.stdout, proc.stderr]
    for key in keys(s3, "e2e/neon-sweep/"):
        if not key.endswith(".png"):
            texts.append(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    logs = [log for session in sessions for log in (session / "logs").rglob("*")
            if log.is_file() and log.suffix in (".out", ".err", ".log")]  # fmt: skip
    read = [log.read_bytes() for log in logs]
    texts += read
    # The scan read the run's logs: its render workers' among them (Ray heads a worker's
    # log with the actor's class), the GCS's and the raylet's.
    assert any(b":actor_name:RenderWorker" in text for text in read), sessions
    assert {"gcs_server.out", "raylet.out"} <= {log.name for log in logs}, sessions
    for secret in (s3.secret, s3.access_key):
        for text in texts:
            assert secret.encode() not in (text if isinstance(text, bytes) else text.encode())


def _cases(s3_port_unused: int):
    return [
        ("unreachable", ["--s3-endpoint", f"http://127.0.0.1:{s3_port_unused}"], "s3://farm-test/x",
         {}, "cannot reach the S3 endpoint"),
        ("missing-bucket", [], "s3://no-such-bucket/x", {}, "the bucket does not exist"),
        ("no-credentials", [], "s3://farm-test/x",
         {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no S3 credentials found"),
        ("malformed", [], "s3://", {}, "--output: 's3://' is not an s3:// URL (write s3://bucket/key)"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(4), ids=["unreachable", "missing-bucket", "no-creds", "url"])
def test_bad_storage_is_refused_before_rendering(s3, tmp_path, case):
    name, extra, output, env_over, expected = _cases(free_port())[case]
    env = {k: v for k, v in os.environ.items() if env_over.get(k, v) is not None}
    proc = farm("run", small_spec(tmp_path), "--output", output, *extra, check=False, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and expected in line, line
    assert "Traceback" not in proc.stderr and s3.secret not in proc.stderr
    assert keys(s3, "x/") == []


def test_access_denied_is_refused_before_rendering(s3, tmp_path):
    # A second server that enforces authentication, so our keys are unknown to it.
    proc, port = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        run = farm("run", small_spec(tmp_path), "--output", "s3://farm-test/x",
                   "--s3-endpoint", f"http://127.0.0.1:{port}", check=False)  # fmt: skip
    finally:
        proc.kill()
    assert run.returncode == 2 and "access denied" in run.stderr, run.stderr
    assert s3.access_key not in run.stderr and s3.secret not in run.stderr


# Outages (half a minute, and longer) are in test_s3_outage.py.


def test_corrupt_parts_are_named_by_verify_and_rendered_again(s3, s3_job):
    # A copy of the finished end-to-end job (resume reads the job's place from its URL),
    # so only the damaged units render here.
    client = s3.client()
    for key in keys(s3, "e2e/neon-sweep/"):
        client.copy_object(Bucket=s3.bucket, Key=key.replace("e2e/", "corrupt/", 1),
                           CopySource={"Bucket": s3.bucket, "Key": key})  # fmt: skip
    job_url = s3.url("corrupt/neon-sweep")
    store = S3Store.from_url(job_url)
    garbage, truncated = sorted(store.list("parts/"))[:2]
    store.put(garbage, os.urandom(200))
    data = store.get(truncated)
    store.put(truncated, data[: len(data) // 2])

    checked = farm("verify", job_url, check=False)
    assert checked.returncode == 1
    assert f"{garbage}: corrupt part" in checked.stdout
    assert f"{truncated}: corrupt part" in checked.stdout

    resumed = farm_here("resume", job_url, "--local")
    assert f"removing corrupt part {garbage}" in resumed.stdout
    assert f"removing corrupt part {truncated}" in resumed.stdout
    assert rendered(resumed) == 16  # the two damaged units, 8 items each
    assert "ok: 48 planned items, 48 rows, 48 images" in farm("verify", job_url).stdout
