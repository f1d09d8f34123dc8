"""Scale-out on real Ray: fake GPUs, a multi-node cluster losing a node, a `ray start`
head taking submitted jobs, Ctrl-C, and units that fail by themselves."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FARM, REPO
from midjob import Hold

from farm.demo_loras import demo_lora_path
from farm.executor import IN_FLIGHT

pytestmark = pytest.mark.slow


def farm(*args: str, env: dict | None = None, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    proc = subprocess.run([*FARM, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
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
        "render": {"steps": 3, "width": 64, "height": 64},
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


# ---------------------------------------------------------------- fake GPUs


def test_four_fake_gpus_each_render_and_adapter_sets_stay_on_few_workers(ray_head, tmp_path):
    # 2 adapter sets x 4 units on 4 one-GPU workers: two workers per set, one load each.
    spec = write_spec(tmp_path, "affinity")
    run = farm("run", str(spec), "--address", ray_head.address, env=ray_head.env)
    assert "on 4 workers (1.0 GPU each)" in run.stdout
    job = tmp_path / "out" / "affinity"
    counters = job_doc(job)["runs"][0]["counters"]
    details = counters["worker_details"]
    assert counters["workers"] == 4 and len(details) == 4
    assert all(d["images"] > 0 for d in details), details
    for d in details:
        rendered = {name for adapter_set in d["adapter_sets_rendered"] for name in adapter_set}
        # No worker loads an adapter it never renders; each keeps to one adapter set.
        assert set(d["adapters_loaded"]) == rendered and len(d["adapter_sets_rendered"]) == 1
        assert d["pipeline_loads"] == 1
    assert counters["adapter_loads"] == 4  # every worker loading both sets would be 8
    assert sorted(len(d["adapters_loaded"]) for d in details) == [1, 1, 1, 1]
    assert counters["images_per_worker"] and sum(counters["images_per_worker"]) == 64
    assert (counters["retries"], counters["failures"]) == (0, 0)
    assert_verified(job, 64)


def test_a_local_run_starts_its_own_ray_beside_a_running_cluster(ray_head, tmp_path):
    # `ray start` left a cluster with 4 GPUs on this machine; a plain run must not join it.
    spec = write_spec(tmp_path, "private", seeds=[1], combine=[{"neon": 1}])
    run = farm("run", str(spec), "--workers", "1")
    assert "on 1 workers (" in run.stdout and "CPU each" in run.stdout, run.stdout
    assert "Found multiple active Ray instances" not in run.stderr


def test_run_joins_a_cluster_from_one_of_its_nodes_with_the_token_only(ray_head, tmp_path):
    spec = write_spec(tmp_path, "joined", seeds=[1, 2])
    no_token = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}
    refused = farm("run", str(spec), "--address", ray_head.address, env=no_token, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: --address {ray_head.address}: the cluster wants its token; set "
        "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to it, with RAY_AUTH_MODE=token"
    ]
    assert not (tmp_path / "out").exists()
    run = farm("run", str(spec), "--address", ray_head.address, "--workers", "2",
               env=ray_head.env).stdout  # fmt: skip
    # The head's fake GPUs: the workers asked the cluster for one each.
    assert "rendering 16 images on 2 workers (1.0 GPU each)" in run
    assert_verified(tmp_path / "out" / "joined", 16)


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
        nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(3)]
        cluster.wait_for_nodes()
        # 24 units in 2 adapter sets: enough that every node's worker takes its full load
        # of units in flight, whichever stream it keeps to.
        spec = write_spec(tmp_path, "node-loss", seeds={"start": 0, "count": 24})
        job = tmp_path / "out" / "node-loss"
        driver = subprocess.Popen(
            [*FARM, "run", str(spec), "--address", cluster.address], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_part(job, driver)
        hold.wait_held(3 * IN_FLIGHT, driver)  # every node's worker: units in flight
        cluster.remove_node(nodes[1])
        hold.open()
        out, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, out + err
        counters = job_doc(job)["runs"][0]["counters"]
        assert counters["worker_deaths"] >= 1
        assert counters["failures"] == 0
        assert_verified(job, 192)
    finally:
        cluster.shutdown()


# ---------------------------------------------------------------- farm submit


def test_submit_to_a_ray_head_carries_local_loras_and_verifies(ray_head, tmp_path):
    loras = tmp_path / "my-loras"
    loras.mkdir()
    shutil.copy(demo_lora_path("tiny:neon"), loras / "neon.safetensors")
    spec = write_spec(
        tmp_path, "submitted", seeds=[1, 2],
        loras=[{"name": "neon", "path": "my-loras/neon.safetensors", "alpha": [0, 0.5, 1]}],
        combine="product",
    )  # fmt: skip
    out = farm("submit", str(spec), "--address", ray_head.jobs_url, "--wait",
               env=ray_head.env).stdout  # fmt: skip
    assert "submitted farm-submitted-" in out and "succeeded" in out
    job = tmp_path / "out" / "submitted"
    assert_verified(job, 12)
    # The LoRA travelled with the job: the cluster rendered with the same file.
    adapters = job_doc(job)["adapters"]
    from farm.loras import inspect_lora

    assert adapters[0]["sha256"] == inspect_lora(loras / "neon.safetensors").sha256
    # The cluster's token never lands in the job or its output.
    for path in [*job.rglob("*.json"), *job.rglob("*.parquet")]:
        assert ray_head.token not in path.read_bytes().decode("latin-1")
    assert ray_head.token not in out


def test_cancel_stops_a_submitted_job_and_submitting_again_finishes_it(ray_head, tmp_path):
    # 16 units: more than the one let through plus the 4 workers' 8 in flight.
    spec = write_spec(tmp_path, "cancelled", seeds={"start": 0, "count": 16})
    # One unit may render before the cancel; the rest wait at the head's hold: the cancel
    # surely lands mid-job.
    hold = Hold(ray_head.hold_folder, tickets=1)
    try:
        out = farm("submit", str(spec), "--address", ray_head.jobs_url, env=ray_head.env).stdout
        submission = out.split()[1]
        job = tmp_path / "out" / "cancelled"
        wait_for_part(job)
        hold.wait_held(1)
        cancel = subprocess.Popen(
            [*FARM, "cancel", submission, "--address", ray_head.jobs_url], cwd=REPO,
            env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Once the driver has the stop and waits for its units in flight, let them finish.
        deadline = time.monotonic() + 120
        while "stopping: waiting for" not in (logs := job_logs(ray_head, submission)):
            assert cancel.poll() is None and time.monotonic() < deadline, logs
            time.sleep(0.5)
        hold.open()
        stopped, err = cancel.communicate(timeout=300)
    finally:
        hold.open()
    assert stopped.strip() == f"{submission}: stopped", err
    logs = job_logs(ray_head, submission)
    assert "rendering 128 images" in logs
    parts = list((job / "parts").glob("*.parquet"))
    assert 0 < len(parts) < 16
    # The driver had time to finish its units in flight and record the stopped run.
    doc = job_doc(job)
    assert doc["status"] == "interrupted", logs
    assert doc["runs"][-1]["rendered"] == 8 * len(parts)
    # The same spec submitted again is the same job: it renders only what is missing.
    again = farm("submit", str(spec), "--address", ray_head.jobs_url, "--wait",
                 env=ray_head.env).stdout  # fmt: skip
    assert "succeeded" in again
    already = int(re.search(r"; (\d+) already rendered", again).group(1))
    assert already >= 8 * len(parts)
    assert job_doc(job)["runs"][-1]["rendered"] == 128 - already
    assert_verified(job, 128)


def job_logs(head, submission: str) -> str:
    return farm("logs", submission, "--address", head.jobs_url, env=head.env).stdout


def test_submit_refuses_what_cannot_reach_the_cluster(ray_head, tmp_path, tiny_dir):
    spec = write_spec(tmp_path, "refused")
    no_token = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}
    cases = [
        (["--address", ray_head.jobs_url], no_token, "set RAY_AUTH_TOKEN"),
        (["--address", "http://127.0.0.1:9"], ray_head.env, "no Ray Jobs API answers"),
        # A remote cluster can't write into this machine's folder.
        (["--address", "http://192.0.2.1:8265"], ray_head.env, "output: "),
    ]
    for args, env, message in cases:
        proc = farm("submit", str(spec), *args, env=env, check=False)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    local_model = write_spec(tmp_path, "local-model", model=str(tiny_dir))
    proc = farm("submit", str(local_model), "--address", ray_head.jobs_url, env=ray_head.env,
                check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: model: {tiny_dir}")
    assert not (tmp_path / "out").exists()
    proc = farm("logs", "farm-nope", "--address", ray_head.jobs_url, env=ray_head.env,
                check=False)  # fmt: skip
    assert proc.returncode == 2 and "farm-nope: no such job" in proc.stderr


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_gracefully_and_resume_finishes(tmp_path, tiny_dir, stop):
    spec = write_spec(tmp_path, "interrupted")  # 64 items in 8 units
    job = tmp_path / "out" / "interrupted"
    # One unit may render before the signal; the rest wait at the hold: units are surely in
    # flight and the job surely unfinished when it comes.
    hold = Hold(tmp_path / "hold", tickets=1)
    said, complaints = tmp_path / "driver.out", tmp_path / "driver.err"
    with said.open("w") as out_file, complaints.open("w") as err_file:
        driver = subprocess.Popen(
            [*FARM, "run", str(spec), "--workers", "2"], cwd=REPO, stdout=out_file,
            stderr=err_file, text=True, start_new_session=True, env={**os.environ, **hold.env},
        )  # fmt: skip
    wait_for_part(job, driver)
    # Both workers hold a full load: the unit let through was reported and replaced.
    hold.wait_held(2 * IN_FLIGHT, driver)
    if stop == "ctrl-c":
        # A terminal's Ctrl-C reaches the whole foreground process group.
        os.killpg(driver.pid, signal.SIGINT)
    else:
        # `docker stop` and Kubernetes signal the driver alone.
        driver.send_signal(signal.SIGTERM)
    # Once the driver has stopped dispatching and waits for its units in flight, let them
    # finish.
    deadline = time.monotonic() + 120
    while "stopping: waiting for" not in said.read_text():
        assert driver.poll() is None and time.monotonic() < deadline, complaints.read_text()
        time.sleep(0.2)
    hold.open()
    driver.wait(timeout=300)
    out, err = said.read_text(), complaints.read_text()
    assert driver.returncode == 1, out + err
    assert "stopping: waiting for" in out and "Traceback" not in out + err
    assert "farm resume" in err
    doc = job_doc(job)
    assert doc["status"] == "interrupted"
    done = doc["runs"][0]["rendered"]
    assert 0 < done < 64
    resumed = farm("resume", str(job), "--workers", "2").stdout
    assert f"{done} already rendered" in resumed or f"{done} already" in resumed
    assert job_doc(job)["runs"][-1]["rendered"] == 64 - done
    assert_verified(job, 64)


# ---------------------------------------------------------------- failing units


@pytest.fixture(scope="module")
def local_ray(tiny_dir):
    import ray

    from farm.executor import start_ray

    start_ray(None, num_gpus=2)
    yield
    ray.shutdown()


def test_the_private_local_ray_refuses_clients_without_its_token(tmp_path):
    # As `farm run` starts it: in a fresh process, before anything imported Ray.
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "from farm.executor import start_ray\n"
        "start_ray(None)\n"
        "import ray\n"
        "address = ray.get_runtime_context().gcs_address\n"
        "outsider = {k: v for k, v in os.environ.items() if not k.startswith('RAY_AUTH')}\n"
        "probe = subprocess.run([sys.executable, '-c', f'import ray; ray.init(address="
        "{address!r}); print(7 * 6)'], capture_output=True, text=True, env=outsider,"
        " timeout=120)\n"
        "print(os.environ['RAY_AUTH_MODE'], len(os.environ['RAY_AUTH_TOKEN']),"
        " probe.returncode, '42' in probe.stdout)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    mode, length, code, joined = out.stdout.split()[-4:]
    assert (mode, length, joined) == ("token", "64", "False") and code != "0"


def test_worker_layout_follows_gpus_per_worker(local_ray):
    from farm.executor import worker_layout

    assert worker_layout(None, None) == (2, {"num_gpus": 1.0, "num_cpus": 1})
    assert worker_layout(None, 0.5) == (4, {"num_gpus": 0.5, "num_cpus": 1})
    count, resources = worker_layout(3, 0)  # 0 GPUs per worker: CPU workers
    assert count == 3 and "num_gpus" not in resources


def test_a_unit_failing_by_itself_is_not_retried_and_resume_renders_only_it(local_ray, tmp_path):
    from farm.executor import execute
    from farm.job import job_context, job_store, open_job, run_job
    from farm.spec import load_spec
    from farm.sweep import make_plan, unit_streams

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
                      workers=2, echo=lambda _: None)  # fmt: skip
    ink_items = {i.item_id for s in unit_streams(plan) if s.adapters == ("ink",)
                 for u in s.units for i in u.items}  # fmt: skip
    assert set(outcome.failed_items) == ink_items and len(ink_items) == 16
    assert outcome.images == 16  # the neon units rendered
    assert outcome.counters["failures"] == 2 and outcome.counters["retries"] == 0
    ink.write_bytes(good)
    result = run_job(spec, workers=2, echo=lambda _: None)
    assert result.ok and result.already_done == 16 and result.rendered == 16
    assert_verified(tmp_path / "out" / "failing", 32)
