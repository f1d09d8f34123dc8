"""A real Ray head started with `ray start --head` on 127.0.0.1, with token auth on."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from s3server import free_ports

RAY = str(Path(sys.executable).parent / "ray")


class Head:
    """`ray start --head --block` in its own process group; the env that reaches it."""

    def __init__(self, gpus: int = 4, cpus: int = 4):
        self.token = secrets.token_hex(16)
        # Short: Ray's unix socket paths live under it and have a ~100-character limit.
        self.temp_dir = tempfile.mkdtemp(prefix="rf", dir="/tmp")
        self.port, self.dashboard_port, client_port, agent_port = free_ports(4)
        self.address = f"127.0.0.1:{self.port}"
        self.jobs_url = f"http://127.0.0.1:{self.dashboard_port}"
        # The entrypoint of a submitted job runs `python`: the one with farm installed.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        self.env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": self.token}  # fmt: skip
        # The worker's test-only hold (tests/midjob.py), for the head's workers: open (no
        # effect) until a test creates this folder.
        self.hold_folder = Path(self.temp_dir) / "hold"
        self.proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={self.port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}",
             f"--ray-client-server-port={client_port}",
             f"--dashboard-agent-listen-port={agent_port}",
             f"--num-gpus={gpus}", f"--num-cpus={cpus}", f"--temp-dir={self.temp_dir}",
             "--disable-usage-stats"],
            env={**self.env, "FARM_TEST_HOLD": str(self.hold_folder)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self._wait_ready()

    def _request(self, path: str) -> urllib.request.Request:
        return urllib.request.Request(
            f"{self.jobs_url}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )

    def logs(self, submission: str) -> str:
        """A submitted job's logs straight from the Jobs API: cheap enough to poll, where
        each `farm logs` is a Python process that imports Ray."""
        import json

        with urllib.request.urlopen(self._request(f"/api/jobs/{submission}/logs"), timeout=10) as r:
            return json.loads(r.read())["logs"]

    def job_info(self, submission: str) -> dict:
        """A submitted job as the Jobs API keeps it: entrypoint, runtime env, status."""
        import json

        with urllib.request.urlopen(self._request(f"/api/jobs/{submission}"), timeout=30) as r:
            return json.loads(r.read())

    def _wait_ready(self, timeout: float = 120) -> None:
        request = self._request("/api/jobs/")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start failed: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray head's Jobs API did not come up")
            time.sleep(0.5)

    def stop(self) -> None:
        import psutil

        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        # Whatever the head started and left behind (raylet, GCS, workers) goes too.
        for proc in psutil.process_iter(["cmdline"]):
            if any(self.temp_dir in part for part in proc.info["cmdline"] or ()):
                proc.kill()
