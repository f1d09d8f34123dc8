"""`farm submit`, `farm logs`, `farm cancel`: a job's driver on a remote Ray cluster.

The driver runs there through Ray's Jobs API. What it needs travels in the runtime_env
working_dir: the resolved spec and the local LoRA and catalog files it names. Models are
too big to travel: they must be `tiny`, an s3:// folder or a hub id. Credentials never
travel: the cluster's nodes bring their own (instance roles, Kubernetes Secrets).
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from farm.errors import FarmError
from farm.spec import Spec

# Ray refuses working_dir packages above 512 MiB; stay well below and say what to do.
MAX_UPLOAD = 256 * 1024 * 1024
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# `farm cancel` (Ray's stop_job) sends the driver SIGTERM, then SIGKILL after this many
# seconds. Ray's default of 3 s cuts off the units in flight and the run's record; this
# leaves time for both, so the cancelled job's job.json says what it rendered.
STOP_GRACE = 60
# What to do when a cluster with token authentication turns a client away.
TOKEN_HINT = ("the cluster wants its token; set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to "
              "it, with RAY_AUTH_MODE=token")  # fmt: skip


class SubmitError(FarmError, ValueError):
    """A job that cannot be submitted as asked (exit 2)."""


@dataclass
class Submitted:
    submission_id: str
    address: str
    job_url: str


def client(address: str):
    """A Jobs API client, or a SubmitError that says the address is wrong."""
    import logging

    from ray.job_submission import JobSubmissionClient

    # Ray's SDK logs each upload at INFO; farm prints what matters itself.
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not urlparse(address).scheme:
        address = f"http://{address}"
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # requests' and Ray's connection errors have no common base
        if "auth" in str(err).lower():
            raise SubmitError(f"--address {address}: {TOKEN_HINT}") from None
        raise SubmitError(
            f"--address {address}: no Ray Jobs API answers there ({_first_line(err)}); "
            "check the address and port (8265), or tunnel to it"
        ) from None


def check_portable(spec: Spec, address: str) -> None:
    """Refuse what cannot reach a remote driver: local models, local output folders."""
    model = spec.model
    if model != "tiny" and not model.startswith("s3://") and Path(model).exists():
        kind = "file" if Path(model).is_file() else "folder"
        raise SubmitError(
            f"model: {model} is a local {kind} and models are too big to travel with a job; "
            "upload it to s3:// and use that URL (or --paths-on-cluster if every node has it)"
        )
    if spec.model_folder is not None:
        raise SubmitError(
            f"model.{spec.model_folder_key}: {spec.model_folder} is a local folder, which a "
            "remote driver cannot read; use --paths-on-cluster with the folder on every node"
        )
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    if not spec.output.startswith("s3://") and host not in LOOPBACK:
        raise SubmitError(
            f"output: {spec.output} is a local folder, so a remote cluster would scatter the "
            "job over its nodes' disks; use s3://bucket/prefix (or --paths-on-cluster)"
        )


def stage(spec: Spec, folder: Path, *, paths_on_cluster: bool = False) -> Spec:
    """Copy what the driver needs into `folder`; returns the spec as the cluster sees it."""
    import dataclasses

    from farm.spec import Catalog

    if paths_on_cluster:
        return spec
    size = 0
    loras = []
    for i, lora in enumerate(spec.loras):
        if lora.path.startswith(("s3://", "tiny:")):
            loras.append(lora)
            continue
        rel = f"loras/{i}-{lora.name}.safetensors"
        size += _copy(Path(lora.path), folder / rel)
        loras.append(dataclasses.replace(lora, path=rel))
    catalog = spec.catalog
    if catalog is not None and not catalog.path.startswith("s3://"):
        rel = f"catalog/{Path(catalog.path).name}"
        size += _copy(Path(catalog.path), folder / rel)
        catalog = Catalog(rel, catalog.template, catalog.key)
    if size > MAX_UPLOAD:
        raise SubmitError(
            f"loras: the local LoRA and catalog files total {size / 2**20:.0f} MiB, more than "
            f"the {MAX_UPLOAD // 2**20} MiB a Ray job can carry; put them on s3:// and use "
            "s3:// paths in the spec"
        )
    output = spec.output if spec.output.startswith("s3://") else str(Path(spec.output).resolve())
    staged = dataclasses.replace(spec, loras=tuple(loras), catalog=catalog, output=output)
    return staged


def submit(
    spec: Spec,
    address: str,
    *,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    paths_on_cluster: bool = False,
    s3_endpoint: str | None = None,
    dtype: str | None = None,
) -> Submitted:
    """Stage the spec's files and start its driver on the cluster; nothing renders here."""
    from farm.plan.sweep import make_plan

    make_plan(spec)  # every bad input is refused here, before anything is uploaded
    if not paths_on_cluster:
        check_portable(spec, address)
    jobs = client(address)
    folder = Path(tempfile.mkdtemp(prefix="farm-submit-"))
    try:
        staged = stage(spec, folder, paths_on_cluster=paths_on_cluster)
        spec_name = "spec.json"
        (folder / spec_name).write_text(json.dumps(staged.to_dict(), indent=2))
        command = ["python", "-m", "farm", "run", spec_name, "--address", "auto"]
        if workers:
            command += ["--workers", str(workers)]
        if gpus_per_worker is not None:
            command += ["--gpus-per-worker", str(gpus_per_worker)]
        if dtype:
            command += ["--dtype", dtype]
        # Only settings that are not secrets travel; the nodes hold their own credentials.
        # This shell's endpoint may be a tunnel the cluster can't reach: it travels only
        # when given for the cluster with --s3-endpoint.
        env = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE)}
        if s3_endpoint:
            env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
        runtime_env: dict = {"working_dir": str(folder), "env_vars": env}
        submission_id = f"farm-{spec.job}-{secrets.token_hex(4)}"
        try:
            jobs.submit_job(
                entrypoint=" ".join(command),
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={"farm_job": spec.job, "output": staged.output},
            )
        except Exception as err:
            raise SubmitError(f"--address {address}: the cluster refused the job "
                              f"({_first_line(err)})") from None  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Submitted(submission_id, address, f"{staged.output.rstrip('/')}/{spec.job}")


def follow(address: str, submission_id: str, echo: Callable[[str], object],
           *, wait: bool = True, poll: float = 1.0) -> str:  # fmt: skip
    """Print the job's logs (as they grow, when `wait`); returns its final status."""
    jobs = client(address)
    shown = 0
    while True:
        status = _status(jobs, address, submission_id)
        logs = jobs.get_job_logs(submission_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL or not wait:
            return status
        time.sleep(poll)


def cancel(address: str, submission_id: str, timeout: float = STOP_GRACE + 30) -> str:
    """Stop a submitted job; its finished units stay, and `farm resume` renders the rest."""
    jobs = client(address)
    status = _status(jobs, address, submission_id)
    if status in TERMINAL:
        return status
    jobs.stop_job(submission_id)
    deadline = time.monotonic() + timeout
    while (status := _status(jobs, address, submission_id)) not in TERMINAL:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return status


def _status(jobs, address: str, submission_id: str) -> str:
    try:
        return str(jobs.get_job_status(submission_id).value)
    except RuntimeError:
        raise SubmitError(
            f"{submission_id}: no such job on {address}; `ray job list` shows the jobs"
        ) from None


def _copy(source: Path, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target.stat().st_size


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
