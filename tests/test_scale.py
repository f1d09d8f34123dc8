"""Scale-out on real Ray: fake GPUs, a `ray start` head joined and taking submitted jobs,
and cancelling one."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time

import pytest
from conftest import FARM, REPO
from jobrun import assert_verified, farm, job_doc, wait_for_part, write_spec
from midjob import Hold

from farm.loras.demo import demo_lora_path
from farm.run.backends import IN_FLIGHT

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- fake GPUs


def test_four_fake_gpus_each_render_and_adapter_sets_stay_on_few_workers(ray_head, tmp_path):
    # 2 adapter sets x 4 units on 4 one-GPU workers: two workers per set, one load each.
    # Every unit waits at the head's hold until all 8 are held, 2 in flight on each worker:
    # a worker that starts after the others (READY_GRACE) still finds units waiting for
    # it, and none can finish and take a second helping first.
    spec = write_spec(tmp_path, "affinity")
    hold = Hold(ray_head.hold_folder, tickets=0)
    try:
        driver = subprocess.Popen(
            [*FARM, "run", str(spec), "--address", ray_head.address], cwd=REPO,
            env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert len({pid for pid, _ in hold.wait_held(8, driver)}) == 4
    finally:
        hold.open()
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, out + err
    assert "on 4 workers (1.0 GPU each)" in out
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
    # verify hashes the images as tasks on the cluster, next to the store.
    out = farm("verify", str(job), "--address", ray_head.address, env=ray_head.env).stdout
    assert f"hashed in 1 task on the Ray cluster at {ray_head.address}" in out
    assert "ok: 64 planned items, 64 rows, 64 images with matching sha256" in out
    # So does the report: each series a task on the cluster, the driver merging rows.
    out = farm("report", str(job), "--address", ray_head.address, env=ray_head.env).stdout
    assert f"series:   32 measured as tasks on the Ray cluster at {ray_head.address}" in out
    assert (job / "report" / "response.parquet").is_file()


def test_a_local_run_starts_its_own_ray_beside_a_running_cluster(ray_head, tmp_path):
    # `ray start` left a cluster with 4 GPUs on this machine; a plain run must not join it.
    spec = write_spec(tmp_path, "private", seeds=[1], combine=[{"neon": 1}])
    run = farm("run", str(spec), "--workers", "1")
    assert "on 1 worker (" in run.stdout and "CPU each" in run.stdout, run.stdout
    assert "Found multiple active Ray instances" not in run.stderr


def test_run_joins_a_cluster_with_the_token_only_and_a_tenants_worker_cap_holds_there(
        ray_head, tmp_path):  # fmt: skip
    import yaml

    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": {"acme": {
        "output": str(tmp_path / "out"), "loras": {"neon": "tiny:neon", "ink": "tiny:ink"},
        "caps": {"workers": 2}}}}))  # fmt: skip
    spec = write_spec(tmp_path, "capped", tenant="acme", seeds=[1, 2],
                      loras=[{"name": "neon"}, {"name": "ink"}])  # fmt: skip
    args = ["run", str(spec), "--address", ray_head.address, "--tenants", str(tenants)]
    no_token = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}
    refused = farm(*args, env=no_token, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: --address {ray_head.address}: the cluster wants its token; set "
        "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to it, with RAY_AUTH_MODE=token"
    ]
    assert not (tmp_path / "out").exists()
    # With the token it joins. The head's 4 fake GPUs would get 4 workers, one each; the
    # tenant may use two, replacements included.
    run = farm(*args, env=ray_head.env).stdout
    assert "rendering 16 images on 2 workers (1.0 GPU each)" in run, run
    job = tmp_path / "out" / "capped"
    assert job_doc(job)["runs"][0]["counters"]["workers"] == 2
    assert_verified(job, 16)


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
    # The driver's AWS keys: the cluster has its own, and these must stay home.
    keys = {"AWS_ACCESS_KEY_ID": "AKIAFARMLEAK" + secrets.token_hex(4).upper(),
            "AWS_SECRET_ACCESS_KEY": "leaked-secret-" + secrets.token_hex(8),
            "AWS_SESSION_TOKEN": "leaked-session-" + secrets.token_hex(8)}  # fmt: skip
    # One worker: the head's four GPUs would start four cold ones for 12 images.
    out = farm("submit", str(spec), "--address", ray_head.jobs_url, "--wait", "--workers", "1",
               env={**ray_head.env, **keys}).stdout  # fmt: skip
    assert "submitted farm-submitted-" in out and "succeeded" in out
    job = tmp_path / "out" / "submitted"
    assert_verified(job, 12)
    # What the cluster was given, as its Jobs API keeps it.
    info = ray_head.job_info(out.split()[1])
    assert info["status"] == "SUCCEEDED", info
    given = json.dumps({k: info.get(k) for k in ("entrypoint", "runtime_env", "metadata")})
    assert "env_vars" in given  # the runtime env was there to look at
    for name, value in keys.items():
        assert value not in given, f"{name} travelled with the job"
        assert name not in json.dumps(info.get("runtime_env")), f"{name} travelled with the job"
    # The LoRA travelled with the job: the cluster rendered with the same file.
    adapters = job_doc(job)["adapters"]
    from farm.loras.files import inspect_lora

    assert adapters[0]["sha256"] == inspect_lora(loras / "neon.safetensors").sha256
    # The cluster's token and the driver's keys never land in the job or its output.
    for path in [*job.rglob("*.json"), *job.rglob("*.parquet")]:
        text = path.read_bytes().decode("latin-1")
        assert all(value not in text for value in [ray_head.token, *keys.values()]), path
    assert ray_head.token not in out


def test_cancel_stops_a_submitted_job_and_submitting_again_finishes_it(ray_head, tmp_path):
    # 8 units: more than the one let through plus the 2 workers' units in flight (2 of
    # the head's 4 fake GPUs are enough to show the stop, at half the start-up cost).
    spec = write_spec(tmp_path, "cancelled")
    # One unit renders before the cancel; then each worker holds a full load at the gate,
    # so exactly those units are in flight when it lands. A graceful stop finishes them
    # all; one that dropped them would leave only the first unit's part.
    hold = Hold(ray_head.hold_folder, tickets=1)
    try:
        out = farm("submit", str(spec), "--address", ray_head.jobs_url, "--workers", "2",
                   env=ray_head.env).stdout  # fmt: skip
        submission = out.split()[1]
        job = tmp_path / "out" / "cancelled"
        wait_for_part(job)
        first = {p.stem for p in (job / "parts").glob("*.parquet")}
        held = {unit for _, unit in hold.wait_held(2 * IN_FLIGHT)}
        assert len(held) == 2 * IN_FLIGHT and not held & first
        cancel = subprocess.Popen(
            [*FARM, "cancel", submission, "--address", ray_head.jobs_url], cwd=REPO,
            env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Once the driver has the stop and waits for its units in flight, let them finish.
        deadline = time.monotonic() + 120
        while "stopping: waiting for" not in (logs := ray_head.logs(submission)):
            assert cancel.poll() is None and time.monotonic() < deadline, logs
            time.sleep(0.5)
        hold.open()
        stopped, err = cancel.communicate(timeout=300)
    finally:
        hold.open()
    assert stopped.strip() == f"{submission}: stopped", err
    logs = job_logs(ray_head, submission)
    assert "rendering 64 images" in logs
    assert f"stopping: waiting for {len(held)} units in flight" in logs
    parts = {p.stem for p in (job / "parts").glob("*.parquet")}
    assert parts == first | held
    # The driver had time to finish its units in flight and record the stopped run.
    doc = job_doc(job)
    assert doc["status"] == "interrupted", logs
    assert doc["runs"][-1]["rendered"] == 8 * len(parts)
    # The same spec submitted again is the same job: it renders only what is missing.
    again = farm("submit", str(spec), "--address", ray_head.jobs_url, "--wait", "--workers",
                 "1", env=ray_head.env).stdout  # fmt: skip
    assert "succeeded" in again
    already = int(re.search(r"; (\d+) already rendered", again).group(1))
    assert already == 8 * len(parts)
    assert job_doc(job)["runs"][-1]["rendered"] == 64 - already
    assert_verified(job, 64)


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


# ---------------------------------------------------------------- placement


def test_workers_a_cluster_cannot_place_stop_after_a_bounded_wait(tmp_path, ray_head):
    """The cluster has 4 GPUs, a worker asks for 8: it may autoscale, so the run waits
    --worker-wait seconds, then stops resumably with exit 1; a resume that fits renders."""
    spec = write_spec(tmp_path, "unplaced", prompts=["a red house"], seeds=[1],
                      combine=[{"neon": 1}])  # fmt: skip
    proc = farm("run", str(spec), "--address", ray_head.address, "--gpus-per-worker", "8",
                "--worker-wait", "3", env=ray_head.env, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no worker has been up for 3s" in proc.stdout
    assert "farm resume" in proc.stderr and "Traceback" not in proc.stderr
    job = tmp_path / "out" / "unplaced"
    assert job_doc(job)["status"] == "failed"
    farm("resume", str(job), "--address", ray_head.address, "--gpus-per-worker", "1",
         "--workers", "1", env=ray_head.env)  # fmt: skip
    assert len(list((job / "images").iterdir())) == 1
