"""SIGKILL at every point of the unit protocol, on a local folder and on S3.

A unit is done once its part exists; its images come first. Wherever a kill lands (before
any image, after some images, with the part half-written, after the part and before the
driver hears of it), resume renders exactly the items whose units have no part, keeps
the rows it has, and `farm verify` is clean. Each kill lands where the test says: the
worker is held at that named point (farm/faults.py, tests/midjob.py) when it strikes.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from click.testing import CliRunner
from conftest import FARM, REPO
from jobrun import write_spec
from midjob import Hold, kill_process, kill_session

from farm.cli import main
from farm.faults import POINTS
from farm.records.job_doc import read_job
from farm.records.parts import PARTS, read_rows
from farm.storage import open_store

pytestmark = pytest.mark.slow

ITEMS = 16  # 2 units of 8


def spec_for(tmp_path, name: str, output: str):
    # 2 prompts × 2 seeds × 4 combinations: a unit of 8 for each of neon and ink.
    return write_spec(tmp_path, name, seeds={"start": 0, "count": 2}, output=output)


def parts(store) -> set[str]:
    return {k[len(PARTS) : -len(".parquet")] for k in store.list(PARTS) if k.endswith(".parquet")}


def rows_by_item(store) -> dict:
    return {r["item_id"]: r["created_at"] for r in read_rows(store).to_pylist()}


def start(tmp_path, spec, hold: Hold, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*FARM, "run", str(spec), *args], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, **hold.env},
    )  # fmt: skip


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_driver_killed_at_any_point_resumes_exactly_the_rest(tmp_path, tiny_dir, s3, point,
                                                               where):  # fmt: skip
    # `--local`: the worker runs in the driver's process, so the kill takes both at once,
    # as when the machine goes.
    output = str(tmp_path / "out") if where == "local" else s3.url(f"kill-{point}")
    spec = spec_for(tmp_path, "killed", output)
    hold = Hold(tmp_path / "hold", at=point)
    driver = start(tmp_path, spec, hold, "--local")
    try:
        (pid, unit), *_ = hold.wait_held(1, driver)
    except AssertionError:
        raise AssertionError(driver.communicate(timeout=60)[1]) from None
    store = open_store(f"{output}/killed")
    if point in ("unit-start", "part-write"):
        assert unit not in parts(store)
    if point == "image-written":
        assert any(k.startswith("images/") for k in store.list("images/"))
        assert unit not in parts(store)
    if point == "part-written":
        assert unit in parts(store)
    kill_session(driver.pid)
    driver.wait(timeout=60)
    hold.open()
    done = parts(store)
    before = rows_by_item(store) if done else {}
    assert len(before) == 8 * len(done)

    # Resume and verify in this process: what they do is the subject, not their start-up.
    resumed = CliRunner().invoke(main, ["resume", f"{output}/killed", "--local"])
    assert resumed.exit_code == 0, resumed.output
    assert f"; {len(before)} already rendered" in resumed.output
    assert read_job(store)["runs"][-1]["rendered"] == ITEMS - len(before)
    after = rows_by_item(store)
    assert {i: after[i] for i in before} == before  # finished units are not rendered again
    verified = CliRunner().invoke(main, ["verify", f"{output}/killed"]).output
    assert f"ok: {ITEMS} planned items, {ITEMS} rows, {ITEMS} images" in verified


# The worker's strikes, in the order one job can take them all: a unit is held at
# image-written alone (its images wait for the upload threads it holds), at the other
# points beside the second unit in flight. Struck first, image-written finds only fresh
# units in flight, and every later strike waits for both: so no unit is struck twice.
ORDER = ("image-written", "unit-start", "part-write", "part-written")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_worker_killed_at_each_point_is_replaced_and_nothing_is_written_twice(
        tmp_path, tiny_dir, s3, where):  # fmt: skip
    # 8 units on one worker, in flight 2 at a time: each strike kills the worker with
    # both of its units (fresh ones), the driver starts another and sends them again.
    output = str(tmp_path / "out") if where == "local" else s3.url("worker-kills")
    spec = write_spec(tmp_path, "worker-killed", seeds={"start": 0, "count": 8}, output=output)
    hold = Hold(tmp_path / "hold", at=ORDER[0])
    driver = start(tmp_path, spec, hold, "--workers", "1")
    store = open_store(f"{output}/worker-killed")
    kept = {}  # the parts that existed when their worker died: not to be written again
    for i, point in enumerate(ORDER):
        held = hold.wait_held(1 if point == "image-written" else 2, driver)
        pids = {pid for pid, _ in held}
        assert len(pids) == 1, held
        units = {unit for _, unit in held}
        if point == "image-written":
            assert any(True for _ in store.list("images/"))
        assert (units <= parts(store)) == (point == "part-written"), (point, units)
        if point == "part-written":
            kept = {unit: store.get(f"{PARTS}{unit}.parquet") for unit in units}
        if i + 1 < len(ORDER):
            hold.move(ORDER[i + 1])
        (pid,) = pids
        kill_process(pid)
        hold.forget(pid)
    hold.open()
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    run = read_job(store)["runs"][0]
    counters = run["counters"]
    assert (counters["worker_deaths"], counters["retries"], counters["failures"]) == (4, 8, 0)
    # The units whose parts were written before the kill are not rendered again: their
    # retries find the part and stop.
    assert len(kept) == 2 and run["rendered"] == 64 - 16
    assert {unit: store.get(f"{PARTS}{unit}.parquet") for unit in kept} == kept
    verified = CliRunner().invoke(main, ["verify", f"{output}/worker-killed"]).output
    assert "ok: 64 planned items, 64 rows, 64 images" in verified
