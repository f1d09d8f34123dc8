"""Joining a Ray cluster, or starting a private local Ray: what every command that spreads
work over Ray needs (a run's workers, a report's and verify's tasks), without the render
stack: nothing here imports torch or diffusers.

A local Ray listens on loopback only and requires a token; joining a cluster says in one
line what to fix when it cannot (ClusterError, exit 2).
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


def error_line(err: Exception) -> str:
    """The line of an error that says what went wrong: the last (a traceback's, or Ray's
    wrapped one's), redacted (printed, and kept in job.json, it may quote an endpoint URL)."""
    cause = getattr(err, "cause", None) or err
    return redact((str(cause).strip().splitlines() or [type(cause).__name__])[-1])[:300]
