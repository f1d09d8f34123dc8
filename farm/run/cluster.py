"""Ray for a run: fit the workers to the cluster farm/run/ray_start.py joins or starts.

The executor asks here how many workers to start and what each needs; the CLI refuses
layouts this machine can never place.
"""

from __future__ import annotations

from farm.run.ray_start import FORWARDED_ENV, ClusterError, error_line, start_ray

__all__ = ["FORWARDED_ENV", "ClusterError", "error_line", "start_ray", "worker_layout",
           "cpu_worker_bytes", "check_layout"]  # fmt: skip

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
