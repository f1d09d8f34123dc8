"""Shared fixtures: one farm home (and so one tiny model build) per pytest run."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# Set before any farm module reads them; subprocesses (the CLI, Ray workers) inherit them.
_HOME = tempfile.mkdtemp(prefix="farm-test-home-")
os.environ["FARM_HOME"] = _HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# The clusters tests start (`ray start`, ray.cluster_utils) skip the idle Python workers Ray
# would start per CPU, as farm's own local Ray does: on a 2-core runner they only cost time.
os.environ["RAY_prestart_worker_first_driver"] = "0"  # noqa: SIM112 (Ray reads it in this case)
# Two test processes share the runner's cores, each rendering and starting renders of its
# own. OpenMP's idle threads spin by default, waiting for the next parallel region; with
# more threads than cores they spin on each other's cores, and a render pair took 3 to 5
# times as long. Passive waiting changes no result, only who gets the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
FARM = [sys.executable, "-m", "farm"]


@pytest.fixture(scope="session")
def farm_home() -> Path:
    return Path(_HOME)


@pytest.fixture(scope="session")
def tiny_dir(farm_home) -> Path:
    """The tiny pipeline, built once for the whole run."""
    from farm.render.tiny import ensure_tiny

    return ensure_tiny()


@pytest.fixture(scope="session")
def cpu_worker(tiny_dir):
    """A RenderWorker used as a plain class, in this process (no Ray)."""
    from farm.worker.render_worker import RenderWorker

    return RenderWorker(device="cpu")


class S3:
    """The session's S3 server: endpoint, bucket, credentials and the relay to cut it."""

    def __init__(self, proc, relay, bucket: str, access_key: str, secret: str):
        self.proc, self.relay, self.bucket = proc, relay, bucket
        self.access_key, self.secret = access_key, secret
        self.endpoint = f"http://127.0.0.1:{relay.port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def s3():
    """moto's server as its own process, reached over HTTP; credentials via the env."""
    import secrets

    from s3server import Relay, start_moto

    proc, port = start_moto()
    relay = Relay(port)
    s3 = S3(proc, relay, "farm-test", "AKIAFARMTEST" + secrets.token_hex(4).upper(),
            "farm-secret-" + secrets.token_hex(16))  # fmt: skip
    # Only the standard chain: these reach the CLI and its Ray workers by inheritance.
    os.environ.update(
        AWS_ACCESS_KEY_ID=s3.access_key,
        AWS_SECRET_ACCESS_KEY=s3.secret,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=s3.endpoint,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    s3.client().create_bucket(Bucket=s3.bucket)
    yield s3
    relay.stop()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_head(tiny_dir):
    """`ray start --head` on 127.0.0.1 with 4 fake GPUs, token auth and the Jobs API.

    One per module that uses it: an idle head costs about 5 CPU-seconds a minute, which
    a session-long one would take from every test that runs after its module."""
    from raycluster import Head

    head = Head(gpus=4, cpus=4)
    yield head
    head.stop()


# The longest modules, longest first (measured on a 2-core runner: about 160, 150, 130,
# 100, 75, 60, 60 and 50 s). A stale order costs balance only, never a result.
LONGEST = ("test_scale.py", "test_stop.py", "test_kill_points.py", "test_families.py",
           "test_run_report.py",
           "test_report.py", "test_s3_outage.py", "test_tenants.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """Longest modules first, then the other slow ones, then the rest: xdist hands out
    modules in this order (pyproject's --no-loadscope-reorder), so the two workers end on
    short ones instead of one waiting out the other's long module."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        if item.path.name in LONGEST:
            return LONGEST.index(item.path.name)
        return len(LONGEST) + (item.path not in slow)

    items.sort(key=rank)
