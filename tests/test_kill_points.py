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
from jobrun import farm, job_doc, write_spec
from midjob import Hold, kill_process, kill_session

from farm.cli import main
from farm.faults import POINTS
from farm.records import PARTS, read_rows
from farm.stores import open_store

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
    assert job_doc_rendered(store) == ITEMS - len(before)
    after = rows_by_item(store)
    assert {i: after[i] for i in before} == before  # finished units are not rendered again
    verified = CliRunner().invoke(main, ["verify", f"{output}/killed"]).output
    assert f"ok: {ITEMS} planned items, {ITEMS} rows, {ITEMS} images" in verified


@pytest.mark.parametrize("point", POINTS)
def test_a_worker_killed_at_any_point_is_replaced_and_nothing_is_written_twice(
        tmp_path, tiny_dir, point):  # fmt: skip
    spec = spec_for(tmp_path, "worker-killed", str(tmp_path / "out"))
    hold = Hold(tmp_path / "hold", at=point)
    driver = start(tmp_path, spec, hold, "--workers", "1")
    (pid, unit), *_ = hold.wait_held(1, driver)
    store = open_store(str(tmp_path / "out" / "worker-killed"))
    written = unit in parts(store)
    kill_process(pid)
    hold.open()
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    run = job_doc(tmp_path / "out" / "worker-killed")["runs"][0]
    assert run["counters"]["worker_deaths"] == 1 and run["counters"]["retries"] >= 1
    # A unit whose part was written before the kill is not rendered again by its retry.
    assert run["rendered"] == (ITEMS - 8 if written else ITEMS)
    assert written == (point == "part-written")
    verified = farm("verify", str(tmp_path / "out" / "worker-killed")).stdout
    assert f"ok: {ITEMS} planned items, {ITEMS} rows, {ITEMS} images" in verified


def job_doc_rendered(store) -> int:
    import json

    return json.loads(store.get("job.json"))["runs"][-1]["rendered"]
