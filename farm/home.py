"""The farm home folder: caches for the tiny model, demo LoRAs and file hashes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def farm_home() -> Path:
    """FARM_HOME, default ~/.cache/farm."""
    return Path(os.environ.get("FARM_HOME") or Path.home() / ".cache" / "farm")


def build_folder(folder: Path, build: Callable[[Path], None]) -> Path:
    """`folder`, made once by `build(tmp)` if it has no model_index.json yet. Built beside
    the target and renamed, so concurrent builders never see half a folder; a builder
    that loses the race keeps the winner's."""
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
