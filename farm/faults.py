"""Named points of the unit protocol, where tests hold a worker to strike it there, and
the one point of the driver's.

A unit goes through four points, in order:

- `unit-start`: the unit begins; none of its images is written;
- `image-written`: one of its images is stored, its part not yet (checked per image);
- `part-write`: its part is being written: on a local folder, half of the part's bytes
  are in the temp file; on S3, the request is about to go (a PUT is all or nothing);
- `part-written`: the part exists, and the driver has not heard of it.

The driver reaches `job-end` once rendering has stopped, before it writes the job's
metadata (held there under the job's name).

A test sets FARM_TEST_HOLD to a folder whose `at` file names one point (none:
`unit-start`). While the folder exists, a unit reaching that point takes a ticket for it
(a `ticket-{point}-*` file) or waits for one, leaving a `held-{pid}-{unit_id}` mark: the
test lets exactly N units through, kills the driver or a worker while the rest are held,
then removes the folder to let them go (tests/midjob.py). The point is read at each
reach, so a test can move the gate while a job runs. Only a unit's first attempt is held:
the retries of units a test struck pass, so a unit is never struck twice.
FARM_TEST_DIE_ON_PROMPT makes a worker exit, as on a lost node, when it is given a unit
with that prompt. Unset, each point costs one environment lookup.
"""

from __future__ import annotations

import contextlib
import os
import time

POINTS = ("unit-start", "image-written", "part-write", "part-written")
JOB_END = "job-end"
HOLD_LIMIT = 300.0  # seconds a held unit waits before it fails (nothing is written)
PARTS = "parts/"  # as farm/records/parts.py keys parts; storage sits below records


_retried: set[str] = set()  # units this process renders again after a failed attempt


def begin(unit_id: str, attempt: int) -> None:
    """The unit `unit_id` starts its attempt `attempt` in this process."""
    if attempt > 1:
        _retried.add(unit_id)


def reach(point: str, unit_id: str) -> None:
    """The unit `unit_id` is at `point`: hold it there if a test asks."""
    folder = os.environ.get("FARM_TEST_HOLD")
    if folder and unit_id not in _retried and _gate_point(folder) == point:
        _hold(folder, point, unit_id)


def _gate_point(folder: str) -> str:
    try:
        with open(os.path.join(folder, "at")) as f:
            return f.read().strip()
    except FileNotFoundError:  # none written, or the gate is gone (open)
        return "unit-start"


def writing(key: str) -> None:
    """A store is part-way through writing `key`: the `part-write` point for parts."""
    if key.startswith(PARTS) and key.endswith(".parquet"):
        reach("part-write", key[len(PARTS) : -len(".parquet")])


def die_if_doomed(prompts: list[str]) -> None:
    """Exit the process, as a lost node does, when a test dooms one of these prompts."""
    doomed = os.environ.get("FARM_TEST_DIE_ON_PROMPT")
    if doomed and doomed in prompts:
        os._exit(70)


def _hold(folder: str, point: str, unit_id: str, limit: float = HOLD_LIMIT) -> None:
    mark = os.path.join(folder, f"held-{os.getpid()}-{unit_id}")
    deadline = time.monotonic() + limit
    try:
        while True:
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                return  # no folder: the gate is open
            for name in names:
                if name.startswith(f"ticket-{point}-"):
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
