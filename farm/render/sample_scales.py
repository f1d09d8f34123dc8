"""Per-sample LoRA scales: one pipeline call renders its items at different strengths.

diffusers and peft scale a LoRA layer by one float per adapter, shared by the whole batch.
Here each LoRA layer's branch is multiplied by a value per sample read from one
preallocated tensor, `table[row, sample]`: one row per (layer, adapter), one column per
item of the call. The value multiplies the output of the branch's `lora_A`, its rank-r
middle (peft then applies `lora_B`, multiplies by the adapter's alpha/rank and adds the
base layer's output): `lora_B` is linear, so this scales the branch per sample, and a
rank-r tensor is a fraction of the width of the layer's output that `lora_B` makes.

- The batch is the first dimension of every LoRA branch: (B, N, C) for attention
  projections, (B, C, H, W) for convolutions, (B, C) for the time embedding.
- Classifier-free guidance in SD and SDXL runs the UNet on [uncond; cond], twice the
  items: a branch whose batch is k times the table's width takes the column vector
  repeated k times, the same order diffusers concatenates in. Flux.1 sees each item
  once (its guidance is an embedding), and Chroma runs its negative pass as a second
  call of the same items: both read the table as it is. The text encoder sees the prompts and the
  negative prompts B at a time, so each prompt's embedding is made at its own item's
  text-encoder strength.
- Block multipliers are per row; a schedule rewrites the UNet rows between steps.
- The values change only by `copy_` into the same tensor, and peft's own float scaling
  stays at weight 1: under torch.compile a new strength is new data, not a new graph.
- A hook costs a Python call per LoRA layer per step. Once a layer's hook has seen its
  batch (its dimensions, and how many times the call's items it holds), the next call
  hands peft a view of the layer's row, times the adapter's alpha/rank, as the layer's
  `scaling`, and takes the hook off: peft's own multiply then scales each sample, and a
  mixed call does the arithmetic of an equal one. A call laid out otherwise (another
  guidance) hooks the layers again. A compiled denoiser keeps its hooks.

Multiplying by exactly 1.0 or 0.0 is exact, so strength 0 in a mixed batch is the base
model's output for that sample, and strength 1 is what set_adapters(…, 1.0) computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from farm.families.base import BlockMap
from farm.spec.strength import Strength


class BatchingUnsupported(Exception):
    """A LoRA layer that per-sample scales cannot drive (a DoRA or other peft variant)."""


@dataclass(frozen=True)
class Row:
    part: str  # te | unet
    module: str  # the LoRA layer's module name in its component
    adapter: str


def unsupported(layers: Sequence[tuple[str, str, object]]) -> str | None:
    """The first LoRA layer per-sample scales cannot drive, said as `name (kind)`."""
    for _, name, module in layers:
        if getattr(module, "lora_variant", None):  # DoRA and its kin scale inside peft
            return f"{name} ({', '.join(sorted(module.lora_variant))}: a LoRA variant)"
    return None


class _ScaleOutput:
    """Forward hook on one `lora_A`: the branch's middle times its row, per sample."""

    def __init__(self, owner: SampleScales, row: int):
        self.owner, self.row = owner, row

    def __call__(self, module, args, output):
        import torch

        if not self.owner.active:
            return output  # a call of plain strengths: peft's float scaling alone
        if not torch.compiler.is_compiling():
            # Eager: a view of the row shaped for this output, made once per shape and
            # kept (the table changes in place), and the branch scaled in place: a hook
            # per LoRA layer per step is the whole cost of mixing strengths in a call.
            key = (self.row, output.shape[0], output.dim())
            scale = self.owner.views.get(key)
            if scale is None:
                scale = self.owner.view(*key)
                # What this layer's batch looks like: from the next call on, peft's own
                # scaling multiplies by the row and this hook comes off (SampleScales.set).
                self.owner.learned[self.row] = (key[2], key[1] // self.owner.table.shape[1])
            return output.mul_(scale) if not output.requires_grad else output * scale
        scale = self.owner.table[self.row]
        n = output.shape[0]
        if n != scale.shape[0]:
            if n % scale.shape[0]:
                raise RuntimeError(
                    f"a LoRA layer saw a batch of {n} for a call of {scale.shape[0]} items"
                )
            scale = scale.repeat(n // scale.shape[0])  # [uncond; cond] under guidance
        return output * scale.view(n, *([1] * (output.dim() - 1)))


class SampleScales:
    """The per-sample scale table of one pipeline and the hooks that read it."""

    def __init__(self, dtype, device):
        self.dtype, self.device = dtype, device
        self.rows: list[Row] = []
        self.adapters: list[str] = []  # in order of first row
        self._index: dict[tuple[int, str], int] = {}
        self._handles: dict[int, object] = {}  # row → its hook, while it has one
        self._targets: dict[int, tuple[object, str]] = {}  # row → (LoRA layer, adapter)
        self._branches: dict[int, object] = {}  # row → the module its hook sits on
        # Rows whose layer's batch a hook has seen (dimensions, times the call's width),
        # and rows read by peft's own `scaling`, set to a view of their row: no hook then,
        # and a mixed call does an equal call's arithmetic. Keyed by the call's layout.
        self.learned: dict[int, tuple[int, int]] = {}
        self.resident: dict[int, tuple[int, int, float]] = {}  # row → dims, k, alpha/rank
        self.layout: object = None
        self._base: dict[tuple[Strength | None, str], object] = {}
        self._hooked = None  # the layer list install() last hooked
        self.table = None  # torch tensor (rows, width), allocated by set()
        self._factors = None  # per row: alpha/rank for resident rows, else 1
        # The table repeated k times along the batch ([uncond; cond] under guidance is
        # k = 2), kept equal to it by _write, and views of their rows shaped per output.
        self.repeats: dict[int, object] = {}
        self.views: dict[tuple[int, int, int], object] = {}
        # Hooks stay on between calls: a call of plain strengths turns them off instead
        # of removing them, so they are installed once per adapter set, not per call.
        self.active = False
        self.installs = 0  # times install() hooked new layers

    @property
    def installed(self) -> bool:
        return bool(self._targets)

    def install(self, layers: Sequence[tuple[str, str, object]]) -> None:
        """Hook every adapter of every LoRA layer (part, name, module) not hooked yet. The
        list is AdapterSet's, made anew when adapters load: the same list is hooked once."""
        if layers is self._hooked:
            return
        if name := unsupported(layers):
            raise BatchingUnsupported(name)
        self.installs += 1
        for part, name, module in layers:
            for adapter, branch in module.lora_A.items():
                up = module.lora_B[adapter]
                if getattr(up, "bias", None) is not None:
                    branch = up  # a bias after the middle: scale the branch's output instead
                key = (id(module), adapter)
                if key in self._index:
                    continue
                row = self._index[key] = len(self.rows)
                self.rows.append(Row(part, name, adapter))
                self._targets[row] = (module, adapter)
                self._handles[row] = branch.register_forward_hook(_ScaleOutput(self, row))
                self._branches[row] = branch
                if adapter not in self.adapters:
                    self.adapters.append(adapter)
        self._hooked = layers
        self._base.clear()

    def remove(self) -> None:
        """Unhook every layer: plain calls go back to peft's float scaling alone."""
        self._evict()
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._targets.clear()
        self._branches.clear()
        self.learned.clear()
        self._index.clear()
        self.rows.clear()
        self.adapters.clear()
        self._base.clear()
        self._hooked = None
        self.table = None
        self.repeats.clear()
        self.views.clear()

    def set(self, samples: Sequence[dict[str, Strength]], steps: int,
            where: BlockMap, layout: object = None) -> Callable | None:  # fmt: skip
        """Write the scales of one call, a {adapter: strength} per sample (an adapter a
        sample lacks is 0 there). Returns a step-end callback for the pipeline when a
        schedule changes the UNet's scales while denoising, else None.

        `layout` names how the call lays its batch out (whether guidance doubles it):
        rows learned under another layout are hooked again and learn it anew."""
        import torch

        if layout != self.layout:
            self._evict()  # batches may have another shape now: learn them again
            self.learned.clear()
            self.layout = layout
        self._settle()
        shape = (len(self.rows), len(samples))
        if self.table is None or tuple(self.table.shape) != shape:
            self.table = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.repeats.clear()
            self.views.clear()
        self._factors = torch.ones(len(self.rows), dtype=torch.float32)
        for row, (_, _, alpha) in self.resident.items():
            self._factors[row] = alpha
        base = torch.stack([self._column(s, where) for s in samples], dim=1)
        if not any(w.schedule for s in samples for w in s.values()):
            self._write(base)
            self._point()
            return None
        # Each sample's schedule per adapter and step, spread to that adapter's UNet rows.
        at = torch.tensor([
            [[1.0 if (w := s.get(a)) is None else w.unet_at(step, steps) for s in samples]
             for a in self.adapters]
            for step in range(steps)
        ])  # fmt: skip  # (steps, adapters, width)
        of_row = torch.tensor([self.adapters.index(r.adapter) for r in self.rows])
        unet = torch.tensor([r.part == "unet" for r in self.rows])[None, :, None]
        values = torch.where(unet, base[None] * at[:, of_row], base[None]).to(self.dtype)
        self._write(values[0])
        self._point()

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            # Runs after step `step`: the scales the next step denoises with.
            if step + 1 < steps:
                self._write(values[step + 1])
            return tensors

        return on_step_end

    def _write(self, values) -> None:
        # A resident row holds peft's alpha/rank too: peft multiplies by it alone.
        self.table.copy_(values.float() * self._factors[:, None])
        for k, table in self.repeats.items():
            table.copy_(self.table.repeat(1, k))

    def _settle(self) -> None:
        """Rows whose batches a hook has seen become resident: peft's `scaling` for the
        layer and adapter becomes a view of the row (times alpha/rank, which
        set_adapters(…, 1.0) has just put there as a float), and the hook comes off."""
        for row, (dims, k) in self.learned.items():
            module, adapter = self._targets[row]
            alpha = module.scaling.get(adapter)
            if row in self.resident or not isinstance(alpha, int | float):
                continue
            self.resident[row] = (dims, k, float(alpha))
            self._handles.pop(row).remove()
        self.learned.clear()

    def _point(self) -> None:
        """Every resident row's peft scaling at its view of this call's table."""
        width = self.table.shape[1]
        for row, (dims, k, _) in self.resident.items():
            module, adapter = self._targets[row]
            key = (row, width * k, dims)
            view = self.views.get(key)
            module.scaling[adapter] = view if view is not None else self.view(*key)

    def _evict(self) -> None:
        """Resident rows back to hooks, peft's scaling back to its float; the views go,
        so hooks learn their batches again (they record one as they make its view)."""
        self.views.clear()
        for row, (_, _, alpha) in self.resident.items():
            module, adapter = self._targets[row]
            module.scaling[adapter] = alpha
            self._handles[row] = self._branches[row].register_forward_hook(
                _ScaleOutput(self, row))  # fmt: skip
        self.resident.clear()

    def view(self, row: int, n: int, dims: int):
        """Row `row` of the table for an output of batch `n` and `dims` dimensions:
        (n, 1, …), from the table repeated as often as `n` is a multiple of its width."""
        width = self.table.shape[1]
        if n % width:
            raise RuntimeError(f"a LoRA layer saw a batch of {n} for a call of {width} items")
        k = n // width
        if k == 1:
            table = self.table
        elif (table := self.repeats.get(k)) is None:
            table = self.repeats[k] = self.table.repeat(1, k)
        view = self.views[(row, n, dims)] = table[row].view(n, *([1] * (dims - 1)))
        return view

    def _column(self, sample: dict[str, Strength], where: BlockMap):
        """One sample's scale for every row before any schedule (float32, on the CPU);
        each (strength, adapter) is worked out once, as sweeps repeat strengths."""
        import torch

        column = torch.zeros(len(self.rows), dtype=torch.float32)
        for adapter in self.adapters:
            strength = sample.get(adapter)
            key = (strength, adapter)
            if key not in self._base:
                if len(self._base) > 4096:  # a long-lived worker sweeps many strengths
                    self._base.clear()
                rows = [i for i, r in enumerate(self.rows) if r.adapter == adapter]
                values = [0.0 if strength is None
                          else strength.layer_scale(self.rows[i].part, self.rows[i].module, where)
                          for i in rows]  # fmt: skip
                self._base[key] = (torch.tensor(rows), torch.tensor(values))
            rows, values = self._base[key]
            column[rows] = values
        return column
