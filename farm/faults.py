"""Named points of the unit protocol, where tests hold a worker to strike it there.

A unit goes through four points, in order:

- `unit-start`: the unit begins; none of its images is written;
- `image-written`: one of its images is stored, its part not yet (checked per image);
- `part-write`: its part is being written: on a local folder, half of the part's bytes
  are in the temp file; on S3, the request is about to go (a PUT is all or nothing);
- `part-written`: the part exists, and the driver has not heard of it.

A test sets FARM_TEST_HOLD to a folder and FARM_TEST_HOLD_AT to one point (default
`unit-start`). While the folder exists, a worker reaching that point takes a ticket (a
`ticket-*` file) or waits for one, leaving a `held-{pid}-{unit_id}` mark: the test lets
exactly N units through, kills the driver or a worker while the rest are held, then
removes the folder to let them go (tests/midjob.py). FARM_TEST_DIE_ON_PROMPT makes a
worker exit, as on a lost node, when it is given a unit with that prompt. Unset, each
point costs one environment lookup.
"""

from __future__ import annotations

import contextlib
import os
import time

POINTS = ("unit-start", "image-written", "part-write", "part-written")
HOLD_LIMIT = 300.0  # seconds a held unit waits before it fails (nothing is written)
PARTS = "parts/"  # as farm/records.py keys parts; storage sits below records


def reach(point: str, unit_id: str) -> None:
    """The unit `unit_id` is at `point`: hold it there if a test asks."""
    folder = os.environ.get("FARM_TEST_HOLD")
    if folder and os.environ.get("FARM_TEST_HOLD_AT", "unit-start") == point:
        _hold(folder, unit_id)


def writing(key: str) -> None:
    """A store is part-way through writing `key`: the `part-write` point for parts."""
    if key.startswith(PARTS) and key.endswith(".parquet"):
        reach("part-write", key[len(PARTS) : -len(".parquet")])


def die_if_doomed(prompts: list[str]) -> None:
    """Exit the process, as a lost node does, when a test dooms one of these prompts."""
    doomed = os.environ.get("FARM_TEST_DIE_ON_PROMPT")
    if doomed and doomed in prompts:
        os._exit(70)


def _hold(folder: str, unit_id: str, limit: float = HOLD_LIMIT) -> None:
    mark = os.path.join(folder, f"held-{os.getpid()}-{unit_id}")
    deadline = time.monotonic() + limit
    try:
        while True:
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                return  # no folder: the gate is open
            for name in names:
                if name.startswith("ticket-"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))  # one taker per ticket
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"FARM_TEST_HOLD: no ticket in {folder} for {limit:g}s")
            with contextlib.suppress(FileNotFoundError):  # the gate opened meanwhile
                open(mark, "a").close()
            time.sleep(0.05)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mark)
