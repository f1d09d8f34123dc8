"""RenderWorker: a plain class that renders units; Ray wraps it as an actor."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from farm import __version__, faults
from farm.plan.items import AUTO_UNIT, Adapter, Item, Settings, Unit
from farm.records.encode import EXTENSIONS, encode_image
from farm.records.infotext import build_infotext, format_number
from farm.records.parts import catalog_pairs, encode_rows, part_key
from farm.render.adapters import adapter_name
from farm.spec import Render
from farm.spec.samplers import SAMPLERS
from farm.spec.strength import schedule_text
from farm.storage import open_store
from farm.worker.localize import local_lora_path, local_model_path

UPLOAD_THREADS = 4
UPLOAD_QUEUE = 16  # images encoded or uploading at once, per worker
SATURATED = 0.5  # share of channel values clipped to 0 or 255 that flags an image
FLAT_STD = 2.0  # pixel standard deviation (of 255) below which an image is flat
# Standard deviation of the final latents (the UNet's space, where the VAE's scaling factor
# gives real pictures unit variance) above which an image is overdriven. The tiny model's
# own renders stay under 1.4; its LoRAs at 4× land between 3 and 7.
OVERDRIVEN_STD = 2.5
# `render.batch: auto` on a CPU: 16, the unit size (bench/batched_grids.py and
# bench/worker_vs_loop.py, BENCHMARKS.md: per image, a call of 16 is some 15-20% cheaper
# than one of 8, which a plain loop is held to when a strength has 8 cells). On a GPU
# auto is the largest call that fits, up to the unit size.
CPU_BATCH = AUTO_UNIT
GPU_BATCH_MAX = AUTO_UNIT


@dataclass(frozen=True)
class JobContext:
    """What every unit of one job shares; sent along with each unit."""

    job_id: str
    store_url: str  # the job's own store: {output}/{job_id}
    model: str  # as in the spec
    model_path: str  # "tiny", a folder, s3:// folder or hub id: each node resolves it
    model_fingerprint: str
    model_name: str
    model_hash: str
    render: Render
    adapters: dict[str, Adapter]
    tenant: str | None = None
    # A checkpoint file's config folder, or a transformer file's base folder (local).
    model_folder: str | None = None


@dataclass
class UnitReport:
    unit_id: str
    images: int
    skipped: bool  # the part already existed: nothing rendered
    seconds: float
    worker: str
    pipeline_loads: int = 0
    adapter_loads: int = 0
    loaded_adapters: tuple[str, ...] = ()  # spec names of the adapters this unit loaded
    flagged: list = field(default_factory=list)  # (item_id, cell, flags) of broken images


def image_key(item: Item, fmt: str) -> str:
    return f"images/{item.item_id}.{EXTENSIONS[fmt]}"


def named_key(item: Item, fmt: str) -> str | None:
    """The friendly copy's key, beside the content-addressed one; None without a name."""
    return f"named/{item.name}.{EXTENSIONS[fmt]}" if item.name else None


class RenderWorker:
    """Holds pipelines and adapters across units; `render(unit)` is the whole story."""

    def __init__(self, device: str | None = None, threads: int | None = None, *,
                 mixed: bool = True, pipelined: bool = True):  # fmt: skip
        """`mixed` lets items of different strengths share a call; `pipelined` encodes and
        writes images on I/O threads while the next call renders. Both are on in a job;
        bench/batched_grids.py turns them off to measure what each is worth."""
        import torch

        from farm.render.pipelines import PipelineCache, pick_device, quiet_libraries

        # Every torch call of the worker runs on this one thread. Ray runs an actor's
        # concurrent calls on threads of its own, and each thread that enters an OpenMP
        # region gets a thread team of its own: with two teams on a 2-core machine, more
        # threads than cores, OpenMP stops spinning between kernels and sleeps instead,
        # and a CPU render ran at two thirds of one core's speed (BENCHMARKS.md).
        self.torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="farm-render")
        self.torch_ident = self.torch_thread.submit(threading.get_ident).result()
        quiet_libraries()
        self.device = pick_device(device)
        if threads and self.device.name == "cpu":
            # Workers sharing a CPU must split its cores, or they thrash.
            self.on_torch_thread(torch.set_num_threads, threads)
        # Rendering is handed local files: `tiny` is built and an s3:// model fetched here,
        # once per node, when the cache first loads the model.
        self.pipelines = PipelineCache(self.device, locate=local_model_path)
        self.node = socket.gethostname()
        self.name = f"{self.node}:{os.getpid()}"
        # PNG encoding and uploads run on these threads so they overlap the next pipeline
        # call; the semaphore bounds the queue, so slow storage slows rendering down.
        self.io = ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="farm-io")
        self.upload_slots = threading.BoundedSemaphore(UPLOAD_QUEUE)
        # The pipeline serves one call at a time; a second unit may wait on its uploads.
        self.render_lock = threading.Lock()
        self.mixed, self.pipelined = mixed, pipelined
        # Set when the run stops at once: a worker in the driver's process (`--local`)
        # cannot be killed, so it gives up its units at the next pipeline call instead.
        self.abandoned = threading.Event()

    def abandon(self) -> None:
        """Give up every unit from the next pipeline call on: nothing more is written,
        and no part, as when a worker process is killed."""
        self.abandoned.set()

    def on_torch_thread(self, fn, *args):
        """fn(*args) on the worker's torch thread (see __init__), from any thread."""
        if threading.get_ident() == self.torch_ident:
            return fn(*args)
        return self.torch_thread.submit(fn, *args).result()

    @contextlib.contextmanager
    def cpu_threads(self, count: int | None):
        """Render with `count` torch threads on CPU, then restore the worker's count.

        CPU kernels split their sums across threads, so an image is bit-identical to
        another render only at the same count.
        """
        import torch

        before = self.on_torch_thread(torch.get_num_threads)
        if count and self.device.name == "cpu":
            self.on_torch_thread(torch.set_num_threads, count)
        try:
            yield
        finally:
            self.on_torch_thread(torch.set_num_threads, before)

    def ready(self) -> dict:
        """Who this worker is; answering means it started."""
        return {"worker": self.name, "node": self.node, "gpu": self.device.label,
                "device": self.device.name, "dtype": self.device.dtype,
                "farm": __version__}  # fmt: skip

    def render(self, unit: Unit, ctx: JobContext, attempt: int = 1) -> UnitReport:
        """Render one unit and write its images, then its part (the completion mark)."""
        start = time.perf_counter()
        store = open_store(ctx.store_url)
        # 1. Skip a unit whose part exists: a retry after the part was written.
        if store.exists(part_key(unit.unit_id)):
            return UnitReport(unit.unit_id, 0, True, 0.0, self.name)
        # Where tests strike (farm/faults.py): a lost worker, or a unit held at a point.
        faults.begin(unit.unit_id, attempt)
        faults.die_if_doomed([item.prompt for item in unit.items])
        faults.reach("unit-start", unit.unit_id)
        with self.render_lock:
            pipe_loads, adapter_loads = self.pipelines.loads, self.pipelines.adapter_loads
            rows, pending, loaded = self.on_torch_thread(self._render_images, unit, ctx, store,
                                                         attempt)  # fmt: skip
            loads = (
                self.pipelines.loads - pipe_loads,
                self.pipelines.adapter_loads - adapter_loads,
            )
        # 6. Wait for this unit's uploads (the next unit is rendering meanwhile), then
        # 7. the part, last: once it exists, the unit is done.
        for fut in pending:
            fut.result()
        store.put_if_absent(part_key(unit.unit_id), encode_rows(rows))
        faults.reach("part-written", unit.unit_id)
        return UnitReport(
            unit.unit_id,
            len(rows),
            False,
            time.perf_counter() - start,
            self.name,
            pipeline_loads=loads[0],
            adapter_loads=loads[1],
            loaded_adapters=loaded,
            flagged=[(r["item_id"], cell_label(r), tuple(r["flags"])) for r in rows if r["flags"]],
        )

    def _render_images(self, unit: Unit, ctx: JobContext, store, attempt: int):
        loaded, new = self._ready(unit, ctx)
        rows: list[dict] = []
        pending: list[Future] = []
        for batch, size, mixed in self._calls(unit, ctx, loaded):
            if self.abandoned.is_set():
                raise RuntimeError("the run stopped: this unit renders again on resume")
            # 4. Strengths for this call (padded to the batch size when compiled, so the
            # shapes never change), then one pipeline call, at the call's own settings.
            render = batch[0].render_of(ctx.render)
            call = batch + [batch[-1]] * (size - len(batch)) if render.compile else batch
            on_step = self._strengths(loaded.adapters, ctx, render, call, mixed)
            t0 = time.perf_counter()
            images, flags = self._call(loaded.pipe, call, render, on_step, loaded.family)
            seconds = (time.perf_counter() - t0) / len(call)
            shared = [item.item_id for item in batch]
            # 5. One row per image; encoding and upload go to the I/O threads.
            for item, image, image_flags in zip(batch, images, flags, strict=False):
                row = self._row(item, unit, ctx, attempt, seconds, len(call), loaded)
                row["flags"] = image_flags
                row["batch_items"] = shared
                self.upload_slots.acquire()
                if self.pipelined:
                    pending.append(self.io.submit(self._write_image, store, image, row))
                else:
                    self._write_image(store, image, row)
                rows.append(row)
        return rows, pending, tuple(a.name for a in new)

    def _ready(self, unit: Unit, ctx: JobContext):
        """Steps 2 and 3: (the loaded pipeline, adapters newly loaded)."""
        # 2. Pipeline from the cache, with the unit's sampler (compiled if the job asks).
        loaded = self.pipelines.get(ctx.model_path, ctx.model_fingerprint, ctx.model_folder)
        loaded.use_scheduler(ctx.render.scheduler)
        # 3. Adapters: what is missing made local (tiny:NAME written, s3:// fetched), then loaded.
        adapters = loaded.adapters
        missing = adapters.missing([ctx.adapters[name] for name in unit.adapters])
        new = adapters.ensure([replace(a, path=local_lora_path(a)) for a in missing])
        return loaded, new

    def _calls(self, unit: Unit, ctx: JobContext, loaded):
        """The unit's pipeline calls: (items, call size, whether items of different
        strengths share it). One call renders at one set of settings, so items with
        their own (a prompt file line's size, steps or guidance) get calls of their own."""
        for _, items in settings_groups(unit.items):
            render = items[0].render_of(ctx.render)
            size = self.batch_size(loaded, render)
            if render.compile:  # after auto's probe, which would compile for its own shape
                loaded.compile()
            # Items of any strengths share a call when every LoRA layer takes per-sample
            # scales; a compiled denoiser always takes them, so strengths never become
            # Python floats.
            mixed = (bool(unit.adapters) and (render.compile or (self.mixed and size > 1))
                     and loaded.adapters.can_mix())  # fmt: skip
            for batch in batches(items, size, mixed):
                yield batch, size, mixed

    @staticmethod
    def _strengths(adapters, ctx: JobContext, render: Render, call: list, mixed: bool):
        """Set the call's LoRA strengths (`render`: its items' settings); returns the
        per-step callback."""
        weights = [[(ctx.adapters[n], w) for n, w in item.loras] for item in call]
        # A call of one strength takes peft's own scaling, as a plain loop's does; a
        # compiled denoiser always reads the table (a float would recompile it).
        if mixed and (render.compile or any(i.loras != call[0].loras for i in call)):
            # The guidance scale says whether the denoiser sees each item once or twice.
            return adapters.activate_per_sample(weights, render.steps, render.guidance)
        return adapters.activate(weights[0], render.steps)

    def batch_size(self, loaded, render: Render) -> int:
        """The call size for this pipeline and render: the spec's, else `auto`'s pick."""
        if render.batch:
            return render.batch
        if self.device.name == "cpu":
            return CPU_BATCH
        return loaded.fitting_batch(render, GPU_BATCH_MAX)

    def _call(self, pipe, batch: list[Item], render: Render, on_step=None,
              family=None) -> tuple[list, list]:  # fmt: skip
        import torch
        from diffusers.image_processor import VaeImageProcessor

        # CPU generators seeded per item: the same noise on any GPU kind, any batch size.
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
        negative = [item.negative_prompt for item in batch]
        last: dict = {}

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            # The latents the VAE decodes are the last step's: kept to flag overdrive.
            last["latents"] = tensors["latents"]
            return on_step(pipe, step, timestep, tensors) if on_step else tensors

        # Guidance in the family's terms: a negative pass (SD, Chroma), an embedding
        # (Flux.1-dev) or none (Flux.1-schnell).
        guidance = (family.pipeline_kwargs(render.guidance, negative if any(negative) else None,
                                           len(batch))
                    if family is not None else
                    {"guidance_scale": render.guidance,
                     "negative_prompt": negative if any(negative) else None})  # fmt: skip
        out = pipe(
            prompt=[item.text for item in batch],
            num_inference_steps=render.steps,
            **guidance,
            width=render.width,
            height=render.height,
            generator=generators if len(generators) > 1 else generators[0],
            # Floats first, to flag broken images; the PIL conversion is diffusers' own.
            output_type="np",
            callback_on_step_end=on_step_end,
        )
        arrays = out.images
        spread = [None] * len(arrays)
        if "latents" in last:
            latents = last["latents"].float()
            spread = latents.reshape(len(latents), -1).std(dim=1).tolist()
        flags = [image_flags(a, s) for a, s in zip(arrays, spread, strict=True)]
        return VaeImageProcessor.numpy_to_pil(arrays), flags

    def _row(self, item: Item, unit: Unit, ctx: JobContext, attempt: int, seconds: float,
             batch_size: int, loaded) -> dict:  # fmt: skip
        import torch

        r = item.render_of(ctx.render)  # a prompt file line's own settings, where it has them
        placed = {n: loaded.adapters.placements.get(adapter_name(ctx.adapters[n]))
                  for n, _ in item.loras}  # fmt: skip
        lora_hashes = [(n, ctx.adapters[n].shorthash) for n, _ in item.loras]
        infotext = build_infotext(
            prompt=item.prompt,
            negative_prompt=item.negative_prompt,
            steps=r.steps,
            sampler=SAMPLERS[r.scheduler].a1111_name,
            cfg_scale=r.guidance,
            seed=item.seed,
            width=r.width,
            height=r.height,
            model_hash=ctx.model_hash,
            model=ctx.model_name,
            lora_hashes=lora_hashes,
            version=f"farm {__version__}",
            guidance=loaded.family.infotext(r.guidance),
        )
        key = image_key(item, r.format)
        loras = [
            {"name": n, "sha256": ctx.adapters[n].sha256, "shorthash": ctx.adapters[n].shorthash,
             "weight": w.weight, "te_weight": w.te, "unet_weight": w.unet,
             "blocks": w.blocks.name if w.blocks else None,
             "schedule": schedule_text(w.schedule) if w.schedule else None,
             "applied": placed[n].applied if placed[n] else None,
             "dropped": placed[n].dropped if placed[n] else None,
             "checkpoint": checkpoint_of(ctx.adapters[n])}
            for n, w in item.loras
        ]  # fmt: skip
        return {
            "job_id": ctx.job_id, "tenant": ctx.tenant, "item_id": item.item_id,
            "unit_id": unit.unit_id, "prompt": item.prompt,
            "negative_prompt": item.negative_prompt, "seed": item.seed, "rng": "cpu",
            "model": ctx.model, "model_hash": ctx.model_hash, "loras": loras,
            "alpha": item.alpha, "preset": item.preset, "steps": r.steps, "guidance": r.guidance,
            "scheduler": r.scheduler, "width": r.width, "height": r.height,
            "catalog": catalog_pairs(item.catalog), "image_key": key, "file_name": key,
            "format": r.format, "render_seconds": seconds, "batch_size": batch_size,
            "worker": self.name, "node": self.node, "gpu": self.device.label,
            "threads": torch.get_num_threads(), "attempt": attempt,
            "created_at": datetime.now(UTC), "infotext": infotext,
            "named_key": named_key(item, r.format),
        }  # fmt: skip

    def _write_image(self, store, image, row: dict) -> None:
        try:
            data = encode_image(image, row["format"], row["infotext"])
            row["image_sha256"] = hashlib.sha256(data).hexdigest()
            row["image_bytes"] = len(data)
            store.put(row["image_key"], data)
            if row["named_key"]:  # the same bytes: a retried unit rewrites both keys alike
                store.put(row["named_key"], data)
            faults.reach("image-written", row["unit_id"])
        finally:
            self.upload_slots.release()


def checkpoint_of(adapter: Adapter) -> dict | None:
    """A row's record of the training-run checkpoint an adapter is, or None."""
    if adapter.run is None:
        return None
    return {"run": adapter.run, "file": f"{adapter.name}.safetensors", "step": adapter.step,
            "epoch": adapter.epoch}  # fmt: skip


def cell_label(row: dict) -> str:
    """A flagged image's cell, for the run summary: `seed 3, neon=1.8`."""
    loras = ", ".join(f"{x['name']}={format_number(x['weight'])}" for x in row["loras"])
    return f"seed {row['seed']}" + (f", {loras}" if loras else "")


def image_flags(array, latent_std: float | None = None) -> list[str]:
    """What looks broken in a rendered image (floats in [0, 1], H x W x C), given the
    standard deviation of the latents it was decoded from where known.

    nonfinite: NaN or inf came out of the pipeline (shown black); saturated: most values
    are clipped to 0 or 1; flat: the image is nearly one color; overdriven: the latents
    spread far past the unit variance of real pictures, as when a LoRA's strength pushes
    the UNet out of its range. Far-overdriven strengths produce the first three.
    """
    import numpy as np

    flags = []
    finite = np.isfinite(array)
    if not finite.all():
        flags.append("nonfinite")
    values = np.where(finite, array, 0.0)
    if np.mean((values <= 0.5 / 255) | (values >= 254.5 / 255)) > SATURATED:
        flags.append("saturated")
    if float(np.std(values)) * 255 < FLAT_STD:
        flags.append("flat")
    if latent_std is not None and latent_std > OVERDRIVEN_STD:  # NaN compares false
        flags.append("overdriven")
    return flags


def settings_groups(items: Sequence[Item]) -> list[tuple[Settings, list[Item]]]:
    """A unit's items by their render settings, each group in order, groups in order of
    first use: a pipeline call renders at one size, step count and guidance."""
    groups: dict[Settings, list[Item]] = {}
    for item in items:
        groups.setdefault(item.settings, []).append(item)
    return list(groups.items())


def batches(items: Sequence[Item], size: int, mixed: bool) -> list[list[Item]]:
    """Cut a unit's items into pipeline calls of at most `size`: in order when strengths
    can differ within a call (`mixed`), else only items of identical strengths together;
    never items of different render settings together (settings_groups sorts them)."""
    out: list[list[Item]] = []
    for item in items:
        last = out[-1] if out else None
        if last and len(last) < size and last[0].settings == item.settings and \
                (mixed or last[0].loras == item.loras):  # fmt: skip
            last.append(item)
        else:
            out.append([item])
    return out
