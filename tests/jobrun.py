"""Helpers for tests that drive `farm` as a user does: run it, write a spec, wait for a
part, read job.json, verify."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml
from conftest import FARM, REPO


def farm(*args: str, env: dict | None = None, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    proc = subprocess.run([*FARM, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"farm {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def farm_here(
    *args: str, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`farm` in this process (click's CliRunner), answered as `farm` answers: for the
    commands whose start-up is not what a test is about. A cold `farm` that renders spends
    about 5 CPU-seconds importing torch and diffusers; this process has paid that once.

    Only for commands that stay in the process: `--local` renders, rerender, verify. The
    signal handlers a run installs are put back, and FARM_TENANTS/FARM_TENANT are unset
    unless `env` sets them, as for a fresh process given `env`."""
    import signal

    from click.testing import CliRunner

    from farm.cli import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        unset = {"FARM_TENANTS": None, "FARM_TENANT": None}
        result = CliRunner().invoke(main, list(args), catch_exceptions=False,
                                    env=unset | (env or {}))  # fmt: skip
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    proc = subprocess.CompletedProcess(["farm", *args], result.exit_code, result.stdout,
                                       result.stderr)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"farm {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_spec(folder: Path, name: str, **over) -> Path:
    spec = {
        "job": name,
        "model": "tiny",
        "prompts": ["a red house", "a blue car"],
        "seeds": {"start": 0, "count": 8},
        "loras": [{"name": "neon", "path": "tiny:neon"}, {"name": "ink", "path": "tiny:ink"}],
        "combine": [{"neon": 0.5}, {"neon": 1.0}, {"ink": 0.5}, {"ink": 1.0}],
        # Units of 8, calls of 8: what the stop and kill tests count and hold by.
        "render": {"steps": 3, "width": 64, "height": 64, "batch": 8},
        "output": str(folder / "out"),
    } | over
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def job_doc(job: Path) -> dict:
    return json.loads((job / "job.json").read_text())


def wait_for_part(job: Path, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    parts = job / "parts"
    deadline = time.monotonic() + timeout
    while not (parts.exists() and any(p.suffix == ".parquet" for p in parts.iterdir())):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended first: {proc.communicate()}")
        assert time.monotonic() < deadline, "no part appeared"
        time.sleep(0.2)


def assert_verified(job: Path, planned: int, env: dict | None = None) -> None:
    out = farm("verify", str(job), env=env).stdout
    assert f"ok: {planned} planned items, {planned} rows, {planned} images" in out
