"""Which unit a worker takes next: adapter affinity over the sweep's streams.

Each adapter set of the sweep is a stream of units. A worker stays on one stream until
it runs dry, then joins the stream with the most work per worker, so each LoRA is loaded
on no more workers than it takes to keep them all busy. Units sent back by a dead worker
come first, to a worker that holds their adapters if one asks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from farm.plan.items import Unit
from farm.worker.render_worker import UnitReport

# A worker whose stream ran dry joins a stream other workers hold only when it has at
# least this many units per holder left: loading adapters for one last unit costs more
# than it saves.
STEAL_MIN = 4


@dataclass
class Stream:
    """One adapter set's units and the workers currently on it."""

    adapters: tuple[str, ...]
    units: Iterable[Unit]
    left: int  # planned units not yet dispatched (an estimate on resume)
    holders: set[int] = field(default_factory=set)
    buffered: deque = field(default_factory=deque)
    dry: bool = False

    def take(self) -> Unit | None:
        if self.empty:
            return None
        self.left = max(0, self.left - 1)
        return self.buffered.popleft()

    @property
    def empty(self) -> bool:
        # Pulls one unit ahead: a stream is empty only once its iterator is exhausted.
        if not self.buffered and not self.dry:
            unit = next(self.units, None)  # type: ignore[call-overload]
            if unit is None:
                self.dry, self.left = True, 0
            else:
                self.buffered.append(unit)
        return not self.buffered


@dataclass
class Slot:
    """One worker actor and what the scheduler knows about it."""

    id: int
    actor: object
    ready_ref: object = None
    ready: bool = False
    info: dict = field(default_factory=dict)
    stream: Stream | None = None
    in_flight: int = 0
    images: int = 0
    units: int = 0
    adapter_loads: int = 0
    pipeline_loads: int = 0
    loaded: set = field(default_factory=set)  # adapter names loaded in this worker
    rendered: set = field(default_factory=set)  # adapter sets it rendered units of

    def detail(self) -> dict:
        return {
            "worker": self.info.get("worker", f"worker-{self.id}"),
            "node": self.info.get("node", ""),
            "gpu": self.info.get("gpu", ""),
            "images": self.images,
            "units": self.units,
            "pipeline_loads": self.pipeline_loads,
            "adapter_loads": self.adapter_loads,
            "adapters_loaded": sorted(self.loaded),
            "adapter_sets_rendered": sorted(list(s) for s in self.rendered),
        }


def next_unit(slot: Slot, streams: list[Stream], retries: deque) -> tuple[Unit, int] | None:
    # 1. Units sent back by a dead worker, preferring ones whose adapters this one holds.
    if retries:
        for i, (unit, attempt) in enumerate(retries):
            if set(unit.adapters) <= slot.loaded:
                del retries[i]
                return unit, attempt
        return retries.popleft()
    # 2. The worker's own stream.
    if slot.stream is not None:
        unit = slot.stream.take()
        if unit is not None:
            return unit, 1
        slot.stream.holders.discard(slot.id)
        slot.stream = None
    # 3. The stream with the most work per worker; those this worker holds win ties. A
    # fresh worker takes any work; one that already rendered only joins a held stream
    # with enough left to be worth loading its adapters.
    fresh = slot.units == 0 and slot.in_flight == 0
    best, best_score = None, -1.0
    for stream in streams:
        if stream.empty:
            continue
        holders = len(stream.holders)
        left = max(stream.left, len(stream.buffered))
        if holders and not fresh and left < STEAL_MIN * holders:
            continue
        score = max(stream.left, 1) / (holders + 1)
        if set(stream.adapters) <= slot.loaded:
            score *= 1.5
        if score > best_score:
            best, best_score = stream, score
    if best is None:
        return None
    best.holders.add(slot.id)
    slot.stream = best
    unit = best.take()
    return (unit, 1) if unit is not None else None


def account(slot: Slot, unit: Unit, report: UnitReport, counters: dict) -> None:
    slot.images += report.images
    slot.units += 1
    slot.pipeline_loads += report.pipeline_loads
    slot.adapter_loads += report.adapter_loads
    slot.loaded.update(report.loaded_adapters)
    if report.images:
        slot.rendered.add(unit.adapters)
    counters["pipeline_loads"] += report.pipeline_loads
    counters["adapter_loads"] += report.adapter_loads
