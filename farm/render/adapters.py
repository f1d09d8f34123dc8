"""LoRA adapters loaded into a pipeline, cached by file sha256, activated per batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from farm.families import Model
from farm.families.base import BlockMap
from farm.families.placement import Placement
from farm.plan.items import Adapter
from farm.spec.strength import Strength


def adapter_name(adapter: Adapter) -> str:
    # Content-addressed: two spec names for one file share one loaded adapter.
    return f"lora_{adapter.sha256[:16]}"


class AdapterSet:
    """The adapters loaded into one pipeline and the strengths currently set."""

    def __init__(self, pipe, model: Model):
        self.pipe, self.model = pipe, model
        self.where = BlockMap(model.family, model.config)
        self.loaded: set[str] = set()
        self.loads = 0
        self.enabled = True
        self._layers: list | None = None
        self._layers_at = -1
        self.per_sample = None  # SampleScales, made on the first mixed call
        self.placements: dict[str, Placement | None] = {}  # what of each file applies

    def missing(self, adapters: Sequence[Adapter]) -> list[Adapter]:
        """The adapters the pipeline lacks, in order."""
        return [a for a in adapters if adapter_name(a) not in self.loaded]

    def ensure(self, adapters: Sequence[Adapter]) -> list[Adapter]:
        """Load the adapters the pipeline lacks; returns those it loaded.

        Each adapter's path must be a local .safetensors file: the worker makes plan
        references (tiny:NAME, s3://) local before it hands adapters over.
        """
        new = []
        for adapter in adapters:
            name = adapter_name(adapter)
            if name not in self.loaded:
                self.placements[name] = self._place(adapter.path)
                self.pipe.load_lora_weights(self._weights(adapter.path), adapter_name=name,
                                            use_safetensors=True)  # fmt: skip
                self.loaded.add(name)
                self.loads += 1
                new.append(adapter)
        return new

    def _place(self, path: str) -> Placement | None:
        """The file's tensors that apply to this model and those it drops; None where the
        model's layers are not at hand (a UNet model from the hub)."""
        from pathlib import Path

        from farm.families.placement import place

        root = Path(self.model.root) if self.model.root else None  # a folder read_folder read
        if root is None and self.model.family.denoiser == "unet":
            return None
        return place(path, self.model, root)

    def _weights(self, path: str):
        """What load_lora_weights takes for this file: the file itself for a UNet family
        (diffusers reads every layout of those), else farm's conversion at the model's
        own widths with only the layers the model has (diffusers' Flux converter assumes
        the released model's widths, and its loader fails on a layer the model lacks)."""
        family = self.model.family
        if family.lora_layers is None:
            return path
        import torch
        from safetensors import safe_open

        from farm.loras.describe import metadata_alphas
        from farm.loras.flux_keys import to_diffusers

        with safe_open(path, "numpy") as f:  # one open: the tensors and their metadata
            alphas = metadata_alphas(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        converted = to_diffusers(tensors, family.lora_layers(self.model.config),
                                 alphas=alphas[0] if len(set(alphas)) == 1 else None)  # fmt: skip
        keep = ("transformer.", *(f"{te}." for te in family.lora_text_encoders))
        return {k: torch.from_numpy(v) for k, v in converted.tensors.items() if k.startswith(keep)}

    def activate(self, weights: Sequence[tuple[Adapter, Strength]],
                 steps: int = 1) -> Callable | None:  # fmt: skip
        """Make exactly these adapters active at these strengths; none means no LoRA.

        Plain strengths go through set_adapters (a cross_attention_kwargs scale of 0 would
        silently reset every adapter to 1.0 for later calls). Split, per-block and
        scheduled strengths set each LoRA layer's scale themselves. Returns a step-end
        callback for the pipeline when a schedule changes the scales while denoising.
        """
        if self.per_sample is not None:
            self.per_sample.active = False  # hooks stay, idle: peft's floats scale alone
        if not weights:
            if self.loaded and self.enabled:
                self.pipe.disable_lora()
                self.enabled = False
            return None
        if not self.enabled:
            self.pipe.enable_lora()
            self.enabled = True
        names = [adapter_name(a) for a, _ in weights]
        if all(w.is_plain for _, w in weights):
            self.pipe.set_adapters(names, [float(w.unet) for _, w in weights])
            return None
        self.pipe.set_adapters(names, [1.0] * len(names))
        settings = list(zip(names, (w for _, w in weights), strict=True))
        self._scale(settings, step=0, steps=steps, text=True)
        if not any(w.schedule for _, w in settings):
            return None

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            # Runs after step `step`: set the scales the next step denoises with.
            self._scale(settings, step=step + 1, steps=steps, text=False)
            return tensors

        return on_step_end

    def can_mix(self) -> bool:
        """Whether one call can give each sample its own strengths: every LoRA layer is
        plain LoRA (DoRA and other peft variants scale inside peft) and sees the call's
        samples along a batch dimension (the family names those that do not)."""
        from farm.render.sample_scales import unsupported

        layers = self._lora_layers()
        flat = self.model.family.unbatched
        if flat is not None and any(p == "unet" and flat.search(n) for p, n, _ in layers):
            return False
        return unsupported(layers) is None

    def activate_per_sample(self, samples: Sequence[Sequence[tuple[Adapter, Strength]]],
                            steps: int = 1, layout: object = None) -> Callable | None:  # fmt: skip
        """Make these adapters active with a strength per sample of one call; every sample
        names the same adapters (a unit's). Returns a step-end callback for schedules.

        Callers check can_mix() first: a DoRA or other variant layer raises
        BatchingUnsupported here.
        """
        import torch

        from farm.render.sample_scales import SampleScales

        if not self.enabled:
            self.pipe.enable_lora()
            self.enabled = True
        names = list(dict.fromkeys(adapter_name(a) for sample in samples for a, _ in sample))
        # peft's floats stay at weight 1: the strengths live in the table alone.
        self.pipe.set_adapters(names, [1.0] * len(names))
        if self.per_sample is None:
            model = denoiser(self.pipe)
            self.per_sample = SampleScales(model.dtype, model.device)
        self.per_sample.install(self._lora_layers())
        self.per_sample.active = True
        table = [{adapter_name(a): w for a, w in sample} for sample in samples]
        with torch.no_grad():
            return self.per_sample.set(table, steps, self.where, layout)

    def _scale(self, settings: list[tuple[str, Strength]], *, step: int, steps: int,
               text: bool) -> None:  # fmt: skip
        for part, name, module in self._lora_layers():
            if part == "te" and not text:
                continue
            for adapter, strength in settings:
                scale = strength.layer_scale(part, name, self.where)
                if part == "unet":
                    scale *= strength.unet_at(step, steps)
                module.set_scale(adapter, scale)

    def _lora_layers(self) -> list[tuple[str, str, object]]:
        """Every LoRA layer of the pipeline: (te | unet, module name, module)."""
        if self._layers is None or self._layers_at != self.loads:
            from peft.tuners.tuners_utils import BaseTunerLayer

            layers = []
            for component, model in self.pipe.components.items():
                if not hasattr(model, "named_modules"):
                    continue
                # The denoiser's layers are "unet" whatever it is; a text encoder's are
                # named with their component (a Flux model's T5 has blocks of its own).
                text = component.startswith("text_encoder")
                part = "te" if text else "unet"
                for name, module in model.named_modules():
                    if isinstance(module, BaseTunerLayer) and hasattr(module, "set_scale"):
                        layers.append((part, f"{component}.{name}" if text else name, module))
            self._layers, self._layers_at = layers, self.loads
        return self._layers


def denoiser(pipe):
    """The pipeline's denoising model: a UNet (SD 1.x, SDXL) or a transformer (SD3, Flux)."""
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer
