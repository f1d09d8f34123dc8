"""Jobs that stop part-way on real Ray: a node of a multi-node cluster lost, Ctrl-C and
SIGTERM, and units that fail by themselves; each finishes on resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import FARM, REPO
from jobrun import assert_verified, farm_here, job_doc, wait_for_part, write_spec
from midjob import Hold

from farm.loras.demo import demo_lora_path
from farm.run.executor import IN_FLIGHT

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- a node lost


def test_a_lost_node_is_rendered_around_and_the_job_completes(tmp_path, tiny_dir, monkeypatch):
    from ray.cluster_utils import Cluster

    # One unit may render, the rest wait at the hold (the nodes' workers inherit it): the
    # node goes while its worker surely holds units, and before the job can finish.
    hold = Hold(tmp_path / "hold", tickets=1)
    monkeypatch.setenv("FARM_TEST_HOLD", str(hold.folder))
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "num_gpus": 0})  # fmt: skip
    try:
        nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        # 12 units in 2 adapter sets: enough that both nodes' workers take their full load
        # of units in flight, whichever stream each keeps to.
        spec = write_spec(tmp_path, "node-loss", seeds={"start": 0, "count": 12})
        job = tmp_path / "out" / "node-loss"
        driver = subprocess.Popen(
            [*FARM, "run", str(spec), "--address", cluster.address], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_part(job, driver)
        hold.wait_held(2 * IN_FLIGHT, driver)  # every node's worker: units in flight
        cluster.remove_node(nodes[1])
        hold.open()
        out, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, out + err
        counters = job_doc(job)["runs"][0]["counters"]
        assert counters["worker_deaths"] >= 1
        assert counters["failures"] == 0
        assert_verified(job, 96)
    finally:
        cluster.shutdown()


# ---------------------------------------------------------------- Ctrl-C


def start_held_run(tmp_path, name: str, tickets: int, *args: str):
    """`farm run` of 64 items in 8 units in its own session, with the hold's env; returns
    (driver, hold, job folder, stdout file, stderr file)."""
    spec = write_spec(tmp_path, name)
    hold = Hold(tmp_path / "hold", tickets=tickets)
    said, complaints = tmp_path / "driver.out", tmp_path / "driver.err"
    with said.open("w") as out_file, complaints.open("w") as err_file:
        driver = subprocess.Popen(
            [*FARM, "run", str(spec), *args], cwd=REPO, stdout=out_file, stderr=err_file,
            text=True, start_new_session=True, env={**os.environ, **hold.env},
        )  # fmt: skip
    return driver, hold, tmp_path / "out" / name, said, complaints


def wait_said(text: str, said, complaints, driver, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in said.read_text():
        assert driver.poll() is None, said.read_text() + complaints.read_text()
        assert time.monotonic() < deadline, f"never said {text!r}: {complaints.read_text()}"
        time.sleep(0.2)


def parts_of(job) -> set[str]:
    folder = job / "parts"
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_waits_for_exactly_the_units_in_flight(tmp_path, tiny_dir, stop):
    # One unit renders; then every worker holds a full load at the gate, so exactly those
    # units are in flight when the signal comes. A graceful stop finishes them all (their
    # parts exist); one that dropped them would leave only the first unit's part.
    # Ctrl-C also reaches the local Ray's workers (one process group): on Ray, two of
    # them. SIGTERM reaches the driver alone; the driver's own worker (--local) shows it.
    workers = 2 if stop == "ctrl-c" else 1
    where = ["--workers", "2"] if stop == "ctrl-c" else ["--local"]
    driver, hold, job, said, complaints = start_held_run(tmp_path, "interrupted", 1, *where)
    wait_for_part(job, driver)
    first = parts_of(job)
    held = {unit for _, unit in hold.wait_held(workers * IN_FLIGHT, driver)}
    assert len(held) == workers * IN_FLIGHT and not held & first
    if stop == "ctrl-c":
        # A terminal's Ctrl-C reaches the whole foreground process group.
        os.killpg(driver.pid, signal.SIGINT)
    else:
        # `docker stop` and Kubernetes signal the driver alone.
        driver.send_signal(signal.SIGTERM)
    # Once the driver has stopped dispatching and waits for its units in flight, let them
    # finish.
    wait_said("stopping: waiting for", said, complaints, driver)
    hold.open()
    driver.wait(timeout=300)
    out, err = said.read_text(), complaints.read_text()
    assert driver.returncode == 1, out + err
    assert f"stopping: waiting for {len(held)} units in flight" in out
    assert "Traceback" not in out + err and "farm resume" in err
    assert parts_of(job) == first | held
    doc = job_doc(job)
    assert doc["status"] == "interrupted"
    done = doc["runs"][0]["rendered"]
    assert done == 8 * len(first | held)
    # What resume renders is the subject here, not where: no Ray to start for it.
    resumed = farm_here("resume", str(job), "--local").stdout
    assert f"; {done} already rendered" in resumed
    assert job_doc(job)["runs"][-1]["rendered"] == 64 - done
    assert_verified(job, 64)


@pytest.mark.parametrize("backend", ["ray", "local"])
def test_a_second_ctrl_c_stops_at_once_and_resume_renders_the_rest(tmp_path, tiny_dir,
                                                                   backend):  # fmt: skip
    # Every unit is held at the gate, and stays held: a second Ctrl-C must not wait for
    # them. Nothing of theirs is written, and resume renders every item.
    args = ["--workers", "1"] if backend == "ray" else ["--local"]
    driver, hold, job, said, complaints = start_held_run(tmp_path, "stopped-now", 0, *args)
    hold.wait_held(IN_FLIGHT, driver)
    os.killpg(driver.pid, signal.SIGINT)
    wait_said("stopping: waiting for", said, complaints, driver)
    os.killpg(driver.pid, signal.SIGINT)
    try:
        driver.wait(timeout=120)
    finally:
        hold.open()
    out, err = said.read_text(), complaints.read_text()
    assert driver.returncode == 1, out + err
    assert "stopped now: units in flight render again on resume" in out
    assert "Traceback" not in out + err
    assert parts_of(job) == set() and job_doc(job)["status"] == "interrupted"
    # Where resume renders is not the subject: no Ray to start for it.
    resumed = farm_here("resume", str(job), "--local").stdout
    assert "; 0 already rendered" in resumed
    assert_verified(job, 64)


# ---------------------------------------------------------------- failing units


@pytest.fixture(scope="module")
def local_ray(tiny_dir):
    import ray

    from farm.run.cluster import start_ray

    start_ray(None, num_gpus=2)
    yield
    ray.shutdown()


def test_worker_layout_follows_gpus_per_worker(local_ray):
    from farm.run.cluster import worker_layout

    assert worker_layout(None, None) == (2, {"num_gpus": 1.0, "num_cpus": 1})
    assert worker_layout(None, 0.5) == (4, {"num_gpus": 0.5, "num_cpus": 1})
    count, resources = worker_layout(3, 0)  # 0 GPUs per worker: CPU workers
    assert count == 3 and "num_gpus" not in resources


def test_cpu_workers_take_a_core_each_while_memory_holds_the_model(local_ray):
    import ray

    from farm.run.cluster import WORKER_BASE_BYTES, cpu_worker_bytes, worker_layout

    cpus = int(ray.cluster_resources()["CPU"])
    memory = ray.cluster_resources()["memory"]
    tiny = cpu_worker_bytes("tiny")
    assert WORKER_BASE_BYTES < tiny < WORKER_BASE_BYTES + (64 << 20)
    # A small model: one single-threaded worker per core.
    assert worker_layout(None, 0, tiny) == (cpus, {"num_cpus": 1})
    # Memory for one copy only: one worker with every core's thread.
    assert worker_layout(None, 0, int(memory)) == (1, {"num_cpus": cpus})
    # A model this machine cannot size (hub id, s3://): the careful layout.
    assert cpu_worker_bytes("s3://bucket/models/sd15") is None
    assert cpu_worker_bytes("runwayml/stable-diffusion-v1-5") is None
    careful = max(1, cpus // 2)
    assert worker_layout(None, 0, None) == (careful, {"num_cpus": cpus // careful})
    # --workers wins over the memory estimate.
    assert worker_layout(1, 0, tiny) == (1, {"num_cpus": cpus})


def test_a_local_runs_workers_are_not_deprioritised(local_ray):
    # Ray starts workers at nice 15 to yield to its daemons; a farm worker is the work,
    # and at 15 any other busy process on the machine takes its cores first.
    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    assert ray.get(niceness.remote(), timeout=120) == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_unit_failing_by_itself_is_not_retried_and_resume_renders_only_it(tmp_path, tiny_dir):
    # Dispatch and failure handling are the executor's loop, the same on either backend:
    # the worker in this process shows it without starting Ray.
    from farm.plan.sweep import make_plan, unit_streams
    from farm.run.executor import execute
    from farm.run.job import job_context, job_store, open_job, run_job
    from farm.spec import load_spec

    ink = tmp_path / "ink.safetensors"
    shutil.copy(demo_lora_path("tiny:ink"), ink)
    spec = load_spec(write_spec(tmp_path, "failing", seeds={"start": 0, "count": 4}, loras=[
        {"name": "neon", "path": "tiny:neon"}, {"name": "ink", "path": str(ink)}]))  # fmt: skip
    plan = make_plan(spec)
    store = job_store(spec)
    open_job(plan, store)
    good = ink.read_bytes()
    ink.write_bytes(good[: len(good) // 2])  # broken after planning: loading it fails
    outcome = execute(unit_streams(plan), job_context(plan, store), total=plan.items,
                      echo=lambda _: None, local=True)  # fmt: skip
    ink_items = {i.item_id for s in unit_streams(plan) if s.adapters == ("ink",)
                 for u in s.units for i in u.items}  # fmt: skip
    assert set(outcome.failed_items) == ink_items and len(ink_items) == 16
    assert outcome.images == 16  # the neon units rendered
    assert outcome.counters["failures"] == 2 and outcome.counters["retries"] == 0
    ink.write_bytes(good)
    result = run_job(spec, echo=lambda _: None, local=True)
    assert result.ok and result.already_done == 16 and result.rendered == 16
    assert_verified(tmp_path / "out" / "failing", 32)


def test_a_first_stop_signal_is_kept_even_inside_a_finalizer():
    # Ray's ObjectRef finalizers run on every loop of the executor; a KeyboardInterrupt
    # raised inside one is printed and dropped. The first Ctrl-C or SIGTERM only sets a
    # flag, so it cannot be lost; the second stops at once.
    from farm.run.executor import Dispatcher

    run = Dispatcher.__new__(Dispatcher)
    run.stop_asked = False
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    class Dropped:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode here
                pass

    with run.stop_signals():
        Dropped()
        assert run.stop_asked
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
