"""Pipelines kept loaded per worker, with the device and dtype each worker picked."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from farm.families import Model
from farm.families.single_file import is_checkpoint_ref
from farm.spec.samplers import SAMPLERS

_LOADING = threading.Lock()


@dataclass(frozen=True)
class Device:
    name: str  # "cuda:0", "cpu"
    dtype: str  # "float16", "bfloat16", "float32"
    label: str  # GPU model for the metadata row, "" on CPU


def pick_device(prefer: str | None = None) -> Device:
    """The first visible CUDA device in half precision (float16 unless FARM_DTYPE says
    bfloat16), else the CPU in float32."""
    import torch

    if prefer != "cpu" and torch.cuda.is_available():
        # FARM_DTYPE (`farm run --dtype`) picks bfloat16 where float16 overflows.
        dtype = os.environ.get("FARM_DTYPE") or ("bfloat16" if prefer == "bf16" else "float16")
        return Device("cuda:0", dtype, torch.cuda.get_device_name(0))
    return Device("cpu", "float32", "")


def quiet_libraries() -> None:
    """Progress bars and load reports from diffusers/transformers flood worker logs."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)


class Loaded:
    """A pipeline with the adapters loaded into it and its samplers, made once each."""

    def __init__(self, pipe, device: Device, model: Model | None = None):
        from farm.render.adapters import AdapterSet

        self.pipe, self.device = pipe, device
        self.model = model or model_of(pipe)
        self.family = self.model.family
        self.adapters = AdapterSet(pipe, self.model)
        self.base_scheduler = pipe.scheduler
        self.schedulers: dict[str, object] = {}
        self.compiled = False
        self._fits: dict[tuple[int, int, float], int] = {}

    def compile(self) -> None:
        """torch.compile the denoiser once. In place (`Module.compile`): replacing
        `pipe.unet` with a compiled wrapper makes set_adapters skip the UNet."""
        from farm.render.adapters import denoiser

        if not self.compiled:
            denoiser(self.pipe).compile()
            self.compiled = True

    def fitting_batch(self, render, most: int) -> int:
        """The largest call (up to `most`) whose peak memory fits in what the GPU has free,
        from one probe per size: a one-step call of one item, then its VAE decode."""
        key = (render.width, render.height, render.guidance)
        if key not in self._fits:
            if self.adapters.per_sample is not None:
                self.adapters.per_sample.remove()  # its table is sized for other calls
            per_item = probe_item_bytes(self.pipe, render, self.family)
            release_cached_memory()
            free = available_bytes(self.device)
            self._fits[key] = max(1, min(most, int(0.8 * free / max(per_item, 1))))
        return self._fits[key]

    def use_scheduler(self, name: str) -> None:
        if name not in self.schedulers:
            self.schedulers[name] = make_scheduler(name, self.base_scheduler.config)
        self.pipe.scheduler = self.schedulers[name]


def make_scheduler(name: str, config: dict):
    """A fresh diffusers scheduler of the named kind, from a pipeline's scheduler config."""
    import diffusers

    sampler = SAMPLERS[name]
    cls = getattr(diffusers, sampler.diffusers_class)
    return cls.from_config(config, **sampler.options)


def as_given(model: str, fingerprint: str | None = None) -> str:
    """A model reference that is already a local diffusers folder (or a hub id)."""
    return model


class PipelineCache:
    """Loaded pipelines by model, least recently used dropped first.

    Bounded by memory: before a model loads, older ones are dropped until the device has
    room for its weights (and never more than `capacity` are kept). `locate(model,
    fingerprint)` gives the local folder to load a model from; it is called only when the
    model is not cached, so the worker that passes it fetches or builds a model once.
    """

    def __init__(self, device: Device, capacity: int = 4,
                 locate: Callable[[str, str | None], str] = as_given):  # fmt: skip
        self.device = device
        self.capacity = capacity
        self.locate = locate
        self.pipelines: OrderedDict[str, Loaded] = OrderedDict()
        self.loads = 0
        self._evicted_adapter_loads = 0

    @property
    def adapter_loads(self) -> int:
        return self._evicted_adapter_loads + sum(p.adapters.loads for p in self.pipelines.values())

    def get(self, model: str, fingerprint: str | None = None,
            folder: str | None = None) -> Loaded:  # fmt: skip
        """The loaded pipeline of `model`; `folder`: a checkpoint file's config folder, or
        a transformer file's base folder."""
        key = model if folder is None else f"{model}\n{folder}"
        if key in self.pipelines:
            self.pipelines.move_to_end(key)
            return self.pipelines[key]
        path = self.locate(model, fingerprint)
        need = 1.2 * (weights_bytes(path) + (weights_bytes(folder) if folder else 0))
        while self.pipelines and (
            len(self.pipelines) >= self.capacity or available_bytes(self.device) < need
        ):
            _, old = self.pipelines.popitem(last=False)
            self._evicted_adapter_loads += old.adapters.loads
            del old
            release_cached_memory()
        if is_checkpoint_ref(path):
            info = checkpoint_info(path, folder)
            loaded = Loaded(load_checkpoint(path, folder, self.device, info), self.device, info)
        else:
            info = local_model(path)
            loaded = Loaded(load_pipeline(path, self.device, info), self.device, info)
        self.pipelines[key] = loaded
        self.loads += 1
        return loaded


def local_model(path: str) -> Model | None:
    """The family and configs of a local model folder; None for a hub id, told from the
    pipeline once loaded."""
    from pathlib import Path

    from farm.families import FamilyError, read_folder

    if not Path(path).is_dir():
        return None
    try:
        return read_folder(Path(path))
    except FamilyError:
        return None  # planning refused it already; the load says what is wrong


def model_of(pipe) -> Model:
    """A loaded pipeline's family, from its class, components and denoiser config."""
    from farm.families import identify
    from farm.render.adapters import denoiser

    index = {"_class_name": type(pipe).__name__}
    for name, component in pipe.components.items():
        index[name] = [None, None] if component is None else ["", type(component).__name__]
    return identify(index, dict(denoiser(pipe).config))


def pipeline_class(model_path: str, model: Model | None = None):
    """The class that loads `model_path` as a text-to-image pipeline: the family's own
    for a folder farm recognises. Any other (a hub id) goes through
    AutoPipelineForText2Image, which imports every pipeline diffusers has to find it:
    about 0.8 CPU-seconds more on every worker's start."""
    import diffusers

    model = model or local_model(model_path)
    name = str(model.index.get("_class_name")) if model is not None else ""
    if model is not None and name in model.family.pipelines:
        return getattr(diffusers, name)
    return diffusers.AutoPipelineForText2Image


def load_pipeline(model_path: str, device: Device, model: Model | None = None):
    """A text-to-image pipeline from a local diffusers folder or hub id; no pickles."""
    import torch

    cls = pipeline_class(model_path, model)
    dtype = load_dtype(device, model)
    # One load at a time in a process: loading builds modules on torch's "meta" device
    # through process-wide patches, and two loads at once can leave them in place.
    with _LOADING:
        pipe = cls.from_pretrained(model_path, dtype=getattr(torch, dtype),
                                   use_safetensors=True)  # fmt: skip
    return _ready(pipe, device)


def checkpoint_info(path: str, folder: str | None) -> Model:
    """A checkpoint file's family and configs, checked against them as planning did."""
    from farm.families.single_file import checkpoint_model

    return checkpoint_model(path, f"model: {path}", folder, "model folder")


def load_checkpoint(path: str, folder: str | None, device: Device, model: Model):
    """A text-to-image pipeline from a single-file checkpoint (and its folder), offline."""
    import torch

    from farm.render.single_file import checkpoint_pipeline

    with _LOADING:
        pipe = checkpoint_pipeline(path, folder, model, getattr(torch, load_dtype(device, model)))
    return _ready(pipe, device)


def _ready(pipe, device: Device):
    if getattr(pipe, "safety_checker", None) is not None:
        # A sweep compares strengths; blacked-out cells would hide exactly what is measured.
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device.name)


def load_dtype(device: Device, model: Model | None) -> str:
    """The dtype a model loads in on this device: the worker's, except that on a GPU a
    family's own (bfloat16 for Flux.1 and Chroma, which overflow in float16) wins unless
    `--dtype` (FARM_DTYPE) chose one."""
    if model is not None and device.name != "cpu" and not os.environ.get("FARM_DTYPE"):
        return model.family.gpu_dtype
    return device.dtype


def weights_bytes(path: str) -> int:
    """Bytes of a local model folder's weight files, or of a checkpoint file (0 for a hub
    id not yet fetched)."""
    from pathlib import Path

    folder = Path(path)
    if folder.is_file():
        return folder.stat().st_size
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def available_bytes(device: Device) -> int:
    """Bytes the device can still take: GPU memory on CUDA, available RAM on the CPU."""
    import torch

    if device.name.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device.name))[0]
    import psutil

    return psutil.virtual_memory().available


def probe_item_bytes(pipe, render, family) -> int:
    """Peak GPU bytes one item adds to a call at this size: a one-step render, then the
    VAE decode of its latents (the decoder's activations are the largest at high sizes)."""
    import torch

    device = pipe.device
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        # The whole call, decode included: the decoder's activations are the largest at
        # high sizes, and latents are the family's own shape (Flux packs them).
        pipe(prompt=["probe"], num_inference_steps=1, width=render.width,
             height=render.height, output_type="np", **family.pipeline_kwargs(render.guidance,
                                                                                None))  # fmt: skip
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def release_cached_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
