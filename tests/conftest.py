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
    from farm.worker import RenderWorker

    return RenderWorker(device="cpu")
