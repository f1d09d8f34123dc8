"""Putting a job surely mid-way: the worker's test-only hold, and killing a whole driver.

A test that interrupts a job (kills a worker, a node or the driver, cancels, Ctrl-C) must
not depend on how fast rendering goes. `Hold` is the gate of FARM_TEST_HOLD at one of the
unit protocol's named points (farm/faults.py: unit-start, image-written, part-write,
part-written): while its folder exists, each unit takes a ticket at that point and waits,
visibly, for one when none is left. So the test lets exactly N units through, strikes
while the rest are held there, then opens the gate. Only first attempts are held: a unit
struck once renders freely on its retry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil


class Hold:
    """A FARM_TEST_HOLD folder with `tickets` units let through to begin with."""

    def __init__(self, folder: Path, tickets: int = 0, at: str = "unit-start"):
        self.folder = folder
        folder.mkdir()
        self.move(at)
        self.give(tickets)

    @property
    def env(self) -> dict[str, str]:
        """What the driver (and so its local Ray's workers) must inherit."""
        return {"FARM_TEST_HOLD": str(self.folder)}

    def move(self, at: str) -> None:
        """Hold units at the point `at` from now on; units held elsewhere stay held.
        Written aside and renamed in: a worker never reads half a name."""
        from farm.faults import JOB_END, POINTS

        assert at in (*POINTS, JOB_END), at
        self.at = at
        (self.folder / "at.new").write_text(at)
        os.replace(self.folder / "at.new", self.folder / "at")

    def forget(self, pid: int) -> None:
        """Drop the marks of a killed worker: it holds nothing any more."""
        for mark in self.folder.glob(f"held-{pid}-*"):
            mark.unlink(missing_ok=True)

    def give(self, tickets: int, at: str | None = None) -> None:
        """Let `tickets` more units through the point `at` (default: the gate's)."""
        for _ in range(tickets):
            (self.folder / f"ticket-{at or self.at}-{uuid.uuid4().hex}").touch()

    def held(self) -> list[tuple[int, str]]:
        """(worker pid, unit_id) of every unit now waiting at the gate."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        marks = [n.split("-", 2) for n in names if n.startswith("held-")]
        return [(int(pid), unit_id) for _, pid, unit_id in marks]

    def wait_held(self, count: int, proc: subprocess.Popen | None = None, timeout: float = 240,
                  name: str | None = None) -> list[tuple[int, str]]:  # fmt: skip
        """Until at least `count` units (or holders named `name`) wait at the gate."""
        deadline = time.monotonic() + timeout
        while len(held := [h for h in self.held() if name in (None, h[1])]) < count:
            assert proc is None or proc.poll() is None, "the driver ended before the hold"
            assert time.monotonic() < deadline, f"{len(held)} of {count} units held"
            time.sleep(0.1)
        return held

    def open(self) -> None:
        """Let every unit through from now on. Renamed away first: atomic, so a worker
        never sees half a gate, and no held mark can land in a folder being deleted."""
        if self.folder.exists():
            gone = self.folder.with_name(f"{self.folder.name}.open-{uuid.uuid4().hex[:8]}")
            os.rename(self.folder, gone)
            shutil.rmtree(gone, ignore_errors=True)


def kill_session(sid: int, timeout: float = 60) -> None:
    """SIGKILL every process of session `sid` (a driver started with
    start_new_session=True, and the local Ray it started: Ray puts each worker in its own
    process group, so killpg misses them), and return once none of them is alive."""
    deadline = time.monotonic() + timeout
    while alive := _session(sid):
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        assert time.monotonic() < deadline, f"still alive: {[p.pid for p in alive]}"
        time.sleep(0.1)


def _session(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            # A zombie runs nothing and writes nothing; its parent reaps it when it can.
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def kill_process(pid: int, timeout: float = 60) -> None:
    """SIGKILL one process and return once it is gone (or a zombie: it runs no more)."""
    deadline = time.monotonic() + timeout
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGKILL)
        while proc.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"{pid} survived SIGKILL"
            time.sleep(0.05)
    except psutil.NoSuchProcess:
        return
