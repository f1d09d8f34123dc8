"""The farm home folder: caches for the tiny model, demo LoRAs and file hashes."""

from __future__ import annotations

import os
from pathlib import Path


def farm_home() -> Path:
    """FARM_HOME, default ~/.cache/farm."""
    return Path(os.environ.get("FARM_HOME") or Path.home() / ".cache" / "farm")
