"""What farm decides on a GPU, checked on a CPU: the device and dtype a worker picks, the
size of `batch: auto` calls, and which pipelines a worker drops when memory runs short.

These test farm's choices, not CUDA. The hardware this machine lacks (a CUDA device, its
memory counters) and the memory it has (free RAM, which a test cannot set) are stood in
for by ONE fixture, `hardware`; everything else is farm's real code, rendering with the
real tiny pipeline on the CPU where a probe renders. No `gpu` marker: these run anywhere.
"""

from __future__ import annotations

import dataclasses
import signal
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from farm.render.pipelines import Device, Loaded, PipelineCache, load_pipeline, weights_bytes
from farm.spec.model import Render

GiB = 2**30
GPU_NAME = "NVIDIA Stand-In 80GB"


class Hardware:
    """What the stubs report: CUDA present or not, its memory, and the machine's free RAM."""

    def __init__(self):
        self.cuda = True
        self.free = 80 * GiB  # torch.cuda.mem_get_info()[0]
        self.resident = 3 * GiB  # memory_allocated(): the pipeline's weights, before a probe
        self.item = 1 * GiB  # what one item adds to a call at its peak
        self.probes = 0  # peak-memory measurements started (reset_peak_memory_stats)
        self.ram = lambda: 64 * GiB  # psutil.virtual_memory().available


@pytest.fixture
def hardware(monkeypatch) -> Hardware:
    """The one place torch.cuda (and free RAM) is stubbed."""
    import psutil
    import torch

    hw = Hardware()
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: hw.cuda)
    monkeypatch.setattr(cuda, "device_count", lambda: 1 if hw.cuda else 0)
    monkeypatch.setattr(cuda, "get_device_name", lambda device=None: GPU_NAME)
    monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (hw.free, 80 * GiB))
    monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: hw.resident)
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: hw.resident + hw.item)

    def reset_peak(device=None) -> None:
        hw.probes += 1

    monkeypatch.setattr(cuda, "reset_peak_memory_stats", reset_peak)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=hw.ram()))
    monkeypatch.delenv("FARM_DTYPE", raising=False)
    return hw


@pytest.fixture(scope="module")
def tiny_pipe(tiny_dir):
    """The tiny pipeline on the CPU: a probe renders with it for real."""
    return load_pipeline(str(tiny_dir), Device("cpu", "float32", ""))


# ---------------------------------------------------------------- device and dtype


def test_a_gpu_worker_renders_in_float16_on_the_first_cuda_device(hardware):
    from farm.render.pipelines import pick_device

    assert pick_device() == Device("cuda:0", "float16", GPU_NAME)
    assert pick_device("cuda") == Device("cuda:0", "float16", GPU_NAME)


def test_farm_dtype_bfloat16_gives_a_bfloat16_gpu_worker(hardware, monkeypatch):
    from farm.render.pipelines import pick_device

    monkeypatch.setenv("FARM_DTYPE", "bfloat16")
    assert pick_device() == Device("cuda:0", "bfloat16", GPU_NAME)


def test_the_dtype_flag_reaches_the_workers(hardware, monkeypatch):
    # `farm run --dtype bfloat16` sets FARM_DTYPE for this process and the workers it
    # starts (Ray's runtime env forwards it): the worker then reports bfloat16.
    from farm.cli import main
    from farm.run.cluster import FORWARDED_ENV
    from farm.worker.render_worker import RenderWorker

    monkeypatch.setenv("FARM_DTYPE", "")  # restored (unset) after the test
    handler = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(main, ["run", "no-such-spec.yaml", "--dtype", "bfloat16"],
                                    catch_exceptions=False,
                                    env={"FARM_TENANTS": None, "FARM_TENANT": None})  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert result.exit_code == 2 and "file not found" in result.stderr  # nothing ran
    assert "FARM_DTYPE" in FORWARDED_ENV
    ready = RenderWorker().ready()
    assert (ready["device"], ready["dtype"], ready["gpu"]) == ("cuda:0", "bfloat16", GPU_NAME)


def test_flux_and_chroma_load_in_bfloat16_on_a_gpu_unless_told(hardware, monkeypatch):
    from farm.families import by_key, tiny_model
    from farm.render.pipelines import load_dtype, pick_device

    gpu = pick_device()
    flux = dataclasses.replace(tiny_model(), family=by_key("flux-dev"))
    chroma = dataclasses.replace(tiny_model(), family=by_key("chroma"))
    assert [load_dtype(gpu, m) for m in (tiny_model(), flux, chroma, None)] == [
        "float16", "bfloat16", "bfloat16", "float16"]  # fmt: skip
    monkeypatch.setenv("FARM_DTYPE", "float16")
    assert load_dtype(pick_device(), flux) == "float16"
    assert load_dtype(pick_device("cpu"), flux) == "float32"


def test_a_cpu_worker_renders_in_float32(hardware, monkeypatch):
    from farm.render.pipelines import pick_device

    monkeypatch.setenv("FARM_DTYPE", "bfloat16")  # a GPU setting: the CPU ignores it
    assert pick_device("cpu") == Device("cpu", "float32", "")  # `--device cpu`, GPU or not
    hardware.cuda = False
    assert pick_device() == Device("cpu", "float32", "")
    assert pick_device("cuda") == Device("cpu", "float32", "")


# ---------------------------------------------------------------- batch: auto


def gpu_worker():
    from farm.worker.render_worker import RenderWorker

    worker = RenderWorker()
    assert worker.device.name == "cuda:0"
    return worker


AUTO = Render(steps=2, width=64, height=64)


@pytest.mark.parametrize(
    ("free", "item", "expected"),
    [
        # 80% of the free memory, over what one item adds at its peak, rounded down:
        # the rest is headroom for the allocator.
        pytest.param(10 * GiB, 1 * GiB, 8, id="10-of-1"),
        pytest.param(10 * GiB, 3 * GiB, 2, id="10-of-3"),
        pytest.param(100 * GiB, 1 * GiB, 16, id="capped-at-the-unit-size"),
        pytest.param(GiB // 2, 1 * GiB, 1, id="never-below-one"),
    ],
)
def test_auto_batch_on_a_gpu_is_the_largest_call_that_fits(hardware, tiny_pipe, free, item,
                                                           expected):  # fmt: skip
    worker = gpu_worker()
    hardware.free, hardware.item = free, item
    loaded = Loaded(tiny_pipe, worker.device)
    assert worker.batch_size(loaded, AUTO) == expected
    assert hardware.probes == 1


def test_auto_batch_probes_once_per_size_and_a_number_is_kept(hardware, tiny_pipe):
    worker = gpu_worker()
    hardware.free = 10 * GiB
    loaded = Loaded(tiny_pipe, worker.device)
    assert worker.batch_size(loaded, AUTO) == 8
    hardware.free = 100 * GiB  # memory freed later: the size's answer is kept
    assert worker.batch_size(loaded, AUTO) == 8 and hardware.probes == 1
    larger = Render(steps=2, width=128, height=64)
    hardware.item = 2 * GiB
    assert worker.batch_size(loaded, larger) == 16  # 0.8 × 100 / 2 = 40, capped
    assert hardware.probes == 2
    assert worker.batch_size(loaded, Render(steps=2, width=64, height=64, batch=3)) == 3
    assert hardware.probes == 2


def test_auto_batch_on_a_cpu_is_16_without_a_probe(hardware, tiny_pipe, cpu_worker):
    loaded = Loaded(tiny_pipe, cpu_worker.device)
    assert cpu_worker.batch_size(loaded, AUTO) == 16
    assert hardware.probes == 0


# ---------------------------------------------------------------- the pipeline cache


def test_the_pipeline_cache_drops_the_least_recently_used_when_memory_runs_short(
    hardware, tiny_dir
):
    # Three models (the tiny folder under three names), each taking `size` of RAM while
    # loaded. The cache holds up to 4, so every drop here is for memory, not capacity.
    size = weights_bytes(str(tiny_dir))
    cache = PipelineCache(Device("cpu", "float32", ""), locate=lambda model, fp: str(tiny_dir))
    assert cache.capacity > 3
    total = {"ram": 10 * size}
    hardware.ram = lambda: total["ram"] - len(cache.pipelines) * size
    cache.get("a")
    cache.get("b")
    assert cache.get("a") is cache.pipelines["a"] and cache.loads == 2  # a is now the newest
    # Room for 1.2 × size is needed; with a and b loaded, 1 × size is left: b goes.
    total["ram"] = 3 * size
    cache.get("c")
    assert list(cache.pipelines) == ["a", "c"] and cache.loads == 3
    # With a and c loaded nothing is free; dropping a (now the oldest) frees 1 × size,
    # not enough, so c goes too.
    total["ram"] = 2 * size
    cache.get("b")
    assert list(cache.pipelines) == ["b"] and cache.loads == 4
    # The model it needs is loaded even where nothing is left to drop.
    total["ram"] = 0
    cache.get("a")
    assert list(cache.pipelines) == ["a"] and cache.loads == 5
