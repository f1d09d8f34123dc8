"""Ray for a run: join a cluster or start a private local one, and fit the workers to it.

A local Ray listens on loopback only and requires a token; joining a cluster says in one
line what to fix when it cannot (ClusterError, exit 2). The executor asks here how many
workers to start and what each needs; the CLI refuses layouts this machine can never place.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import tempfile
import threading

from farm.errors import FarmError
from farm.redact import redact

# Environment the workers need that is not a secret; credentials come from the nodes.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "HF_HUB_OFFLINE", "FARM_HOME", "FARM_DTYPE",
                 "FARM_S3_OUTAGE_SECONDS")  # fmt: skip


def start_ray(address: str | None, num_gpus: int | None = None) -> None:
    """Connect to a cluster, or start a private local Ray: loopback only, no dashboard, no
    Jobs API, no metrics exporters, and token authentication."""
    if not address and "ray" not in sys.modules:
        # Ray reads these when first imported, and its processes inherit them. Ray takes a
        # loopback node address for "this machine, reachable from others" and swaps in the
        # network address, so ray.init(_node_ip_address="127.0.0.1") binds every interface;
        # its single-machine mode (what it uses on macOS) keeps the GCS, raylet, workers
        # and agents on 127.0.0.1. Without metrics collection the dashboard agent opens no
        # Prometheus exporter; farm reads none of Ray's metrics.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        # Two more exporters no setting turns off: the autoscaler monitor and the dashboard
        # process each serve Prometheus metrics, without the token, on a fixed port
        # (44217, 44227) whenever prometheus_client is installed. At an invalid port each
        # fails to start, which Ray logs and carries on from, as it does when a second
        # local Ray finds those ports taken.
        os.environ.setdefault("AUTOSCALER_METRIC_PORT", "-1")
        os.environ.setdefault("DASHBOARD_METRIC_PORT", "-1")
        if not os.environ.get("RAY_AUTH_MODE"):
            # A token known only to this process tree keeps other local users out too. It
            # lives in the environment, never on disk (left to itself, Ray saves a
            # generated one under ~/.ray).
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    runtime_env = {"env_vars": env} if env else None
    # ray.init replaces the SIGTERM handler with an immediate exit; the CLI's handler stops
    # like Ctrl-C (units in flight finish, the run is recorded), so put it back.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        _join(address, runtime_env)
    else:
        # "local": a private instance, even when `ray start` left a cluster on this machine
        # (a bare ray.init() would join that one).
        ray.init(
            address="local",
            include_dashboard=False,
            num_gpus=num_gpus,
            logging_level="WARNING",
            log_to_driver=True,
            # Ray would start a plain Python worker per CPU for the driver's first tasks;
            # farm runs only its render actors, each in a worker of its own, so those sit
            # idle and cost a few CPU-seconds of start-up on every run. Ray starts workers
            # at nice 15 so that they yield to its own daemons; on a farm machine the render
            # worker is the work, and at 15 any other busy process (the driver's merges, a
            # shell, a neighbour) takes its cores first.
            _system_config={"prestart_worker_first_driver": False, "worker_niceness": 0},
        )
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


class ClusterError(FarmError, ValueError):
    """A Ray cluster that cannot be reached or joined (exit 2)."""


def _join(address: str, runtime_env: dict | None) -> None:
    """ray.init on a cluster, or a one-line ClusterError that says what to fix."""
    import ray

    _check_reachable(address)
    # While it retries, Ray's C++ client prints a warning a second to stderr; keep those
    # out of the way and let the outcome speak (replayed when joining works).
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True,
                     runtime_env=runtime_env)  # fmt: skip
            failure = None
        except (ConnectionError, RuntimeError) as err:
            failure = err
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        said = captured.read().decode(errors="replace")
    if failure is None:
        sys.stderr.write(redact(said))
        return
    if "InvalidAuthToken" in said or "Unauthenticated" in said:
        from farm.run.submit import TOKEN_HINT

        raise ClusterError(f"--address {address}: {TOKEN_HINT}")
    raise ClusterError(f"--address {address}: could not join the Ray cluster there "
                       f"({error_line(failure)})")  # fmt: skip


def _check_reachable(address: str) -> None:
    # Ray keeps retrying an address where nothing listens for minutes; a plain TCP
    # connect answers at once.
    if address.startswith(("http://", "https://")):
        raise ClusterError(
            f"--address {address}: that is a Jobs API address; `farm submit SPEC --address "
            f"{address}` runs a job there (`farm run --address` takes the cluster's HOST:6379, "
            "from a machine that is a Ray node)"
        )
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if not target or "://" in target:
        return  # `auto` on a node finds its cluster itself; ray:// is Ray Client's
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected HOST:PORT (the cluster's GCS "
                           "address, usually port 6379)")  # fmt: skip
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise ClusterError(
            f"--address {address}: no Ray cluster answers at {target} "
            f"({err.strerror or type(err).__name__}); check the host and port (6379), or "
            "give `farm submit` the cluster's Jobs API address"
        ) from None


# What a CPU worker holds besides its model: Python, torch, diffusers and Ray (a worker
# rendering the tiny model is about 1 GB resident).
WORKER_BASE_BYTES = 1 << 30
# Share of Ray's memory resource that CPU workers may fill; the rest is the driver's,
# the I/O threads' and the page cache's.
WORKER_MEMORY_SHARE = 0.8


def worker_layout(workers: int | None, gpus_per_worker: float | None,
                  worker_bytes: int | None = None) -> tuple[int, dict]:  # fmt: skip
    """How many workers and what each asks Ray for: GPUs when the cluster has them.

    On CPUs, one single-threaded worker per core while memory holds that many copies of
    the model (`worker_bytes`, from cpu_worker_bytes): a small model's kernels keep one
    core busy but not two, and workers side by side scale where threads within one call
    do not (bench/worker_vs_loop.py, BENCHMARKS.md). Where memory holds fewer, or the
    model's size is unknown, fewer workers with a thread per core they own.
    """
    import ray

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    cpus = int(resources.get("CPU", 1))
    # GPUs asked for explicitly are requested even when none is up yet: an autoscaling
    # cluster adds GPU nodes for the pending workers.
    if (gpus and gpus_per_worker != 0) or gpus_per_worker:
        per = gpus_per_worker or 1.0
        count = workers or max(1, int(gpus / per))
        return count, {"num_gpus": per, "num_cpus": 1}
    if workers:
        count = workers
    elif worker_bytes:
        fits = int(resources.get("memory", 0) * WORKER_MEMORY_SHARE // worker_bytes)
        count = max(1, min(cpus, fits))
    else:
        count = max(1, cpus // 2)
    return count, {"num_cpus": max(1, cpus // count) if count <= cpus else 1}


def cpu_worker_bytes(model_path: str) -> int | None:
    """About the memory a CPU worker holds to render this model: a base, plus twice the
    weights on disk (a CPU renders in fp32, and fp16 files double). None where this
    machine cannot see the files (an s3:// folder, a hub id): the layout stays careful."""
    from farm.render.pipelines import weights_bytes
    from farm.tiny.identity import shipped_weights

    weights = weights_bytes(str(shipped_weights()) if model_path == "tiny" else model_path)
    return WORKER_BASE_BYTES + 2 * weights if weights else None


def check_layout(workers: int | None, gpus_per_worker: float | None) -> None:
    """On a local run, refuse workers this machine can never place (exit 2, before
    anything is written). A cluster may grow, so there the wait is bounded instead."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0), int(resources.get("CPU", 1))
    if gpus_per_worker:
        if not gpus:
            raise ClusterError(
                f"--gpus-per-worker {gpus_per_worker:g}: this machine has no GPU, so no worker "
                "could start; leave the flag out to render on the CPUs, or run on a cluster "
                "with GPUs (--address)"
            )
        count, _ = worker_layout(workers, gpus_per_worker)
        if count * gpus_per_worker > gpus + 1e-9:
            raise ClusterError(
                f"--gpus-per-worker {gpus_per_worker:g}: {count} workers need "
                f"{count * gpus_per_worker:g} GPUs and this machine has {gpus:g}; lower "
                "--workers or --gpus-per-worker"
            )
    elif workers and not gpus and workers > cpus:
        raise ClusterError(
            f"--workers {workers}: this machine has {cpus} CPUs and each worker needs one; "
            f"use --workers {cpus} or fewer"
        )


def error_line(err: Exception) -> str:
    """The line of an error that says what went wrong: the last (a traceback's, or Ray's
    wrapped one's), redacted (printed, and kept in job.json, it may quote an endpoint URL)."""
    cause = getattr(err, "cause", None) or err
    return redact((str(cause).strip().splitlines() or [type(cause).__name__])[-1])[:300]
