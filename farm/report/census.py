"""The report's first pass: read the job's rows once, spill each shot to its bucket, and
gather the few job-wide facts the later passes need (which LoRAs are swept, each axis'
values). Only those facts stay in memory; their size grows with the number of distinct
prompts, seeds, strengths and settings, not with the number of images."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from farm.records.job_doc import read_job
from farm.report.shots import Shot, detail_row, planned_shots, row_tables, shot_from_row
from farm.report.spill import BUCKET_SHOTS, place_bucket, shot_json, shot_of
from farm.storage.scratch import Spill, bucket_count
from farm.storage.store import Store

SHOTS = "shots"
DETAILS = "details"


@dataclass
class Facts:
    """What the job's shots hold, over all of them (planned ones too) and over the
    rendered ones (for the gallery's axes)."""

    weights: dict[str, set[float]] = field(default_factory=dict)  # LoRA → every weight
    context: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    all_seeds: set[int] = field(default_factory=set)
    # Images of each prompt with its settings (text, context), for the sheets' seed blocks.
    prompt_shots: dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    # Over rendered shots only:
    prompts: dict[str, None] = field(default_factory=dict)  # in first-seen order
    seeds: set[int] = field(default_factory=set)
    rendered_weights: dict[str, set[float]] = field(default_factory=lambda: defaultdict(set))
    lora_sets: set[frozenset[str]] = field(default_factory=set)  # the LoRAs of each shot
    shapes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    rendered_context: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    presets: set[str | None] = field(default_factory=set)

    def add(self, shot: Shot) -> None:
        for x in shot.loras:
            self.weights.setdefault(x.name, set()).add(x.weight)
        for k, v in shot.context:
            self.context[k].add(v)
        self.all_seeds.add(shot.seed)
        self.prompt_shots[(shot.text, shot.context)] += 1
        if shot.key is None:
            return
        self.prompts.setdefault(shot.text)
        self.seeds.add(shot.seed)
        for x in shot.loras:
            self.rendered_weights[x.name].add(x.weight)
            self.shapes[x.name].add(x.shape or "plain")
        self.lora_sets.add(frozenset(x.name for x in shot.loras))
        for k, v in shot.context:
            self.rendered_context[k].add(v)
        self.presets.add(shot.preset)

    @property
    def swept(self) -> list[str]:
        """LoRAs whose strength takes more than one value, in first-seen order."""
        return [name for name, v in self.weights.items() if len(v) > 1]

    def varying(self, rendered: bool = False) -> set[str]:
        values = self.rendered_context if rendered else self.context
        return {k for k, v in values.items() if len(v) > 1}

    def strengths(self, names: set[str]) -> list[float]:
        """Every weight a rendered shot gives the first of `names` it has, 0 where it has
        none of them: the values of that LoRA's (or run's) strength axis."""
        values = set().union(*(self.rendered_weights.get(n, set()) for n in names))
        if any(not (names & s) for s in self.lora_sets):
            values.add(0.0)
        return sorted(values)


@dataclass
class Census:
    doc: dict
    facts: Facts
    spill: Spill
    corrupt_parts: list[str]
    per_bucket: int  # the shots a bucket aims at


def gather(store: Store, spill_dir: str | None = None,
           per_bucket: int | None = None) -> Census:  # fmt: skip
    """Read the job's rows into bucket files (shots, and each row's details for the
    gallery), adding the planned items that have no row yet."""
    doc = read_job(store)
    planned = int(doc["plan"]["items"])
    per_bucket = per_bucket or BUCKET_SHOTS
    buckets = bucket_count(planned, per_bucket)
    spill = Spill(buckets, spill_dir)
    facts = Facts()
    corrupt: list[str] = []
    rows = 0
    try:
        for table in row_tables(store, doc, corrupt, columns=None):
            for batch in table.to_batches(max_chunksize=512):
                for row in batch.to_pylist():
                    rows += 1
                    shot = shot_from_row(row)
                    facts.add(shot)
                    b = place_bucket(shot, buckets)
                    spill.add(SHOTS, b, shot_json(shot))
                    spill.add(DETAILS, b, [shot.item_id, row.get("infotext") or "",
                                           detail_row(row)])  # fmt: skip
        if rows < planned or doc.get("status") != "done":
            # Items without a row are missing; a bucket keeps an item's first shot, so a
            # rendered row wins over its planned twin, which comes after it.
            for shot in planned_shots(store, doc):
                facts.add(shot)
                spill.add(SHOTS, place_bucket(shot, buckets), shot_json(shot))
        spill.flush()
    except BaseException:
        spill.close()
        raise
    return Census(doc, facts, spill, corrupt, per_bucket)


def bucket_shots(spill: Spill, bucket: int) -> list[Shot]:
    """One bucket's shots, each item once (its first shot), in item order."""
    seen: dict[str, Shot] = {}
    interned: dict = {}
    for value in spill.read(SHOTS, bucket):
        if value[0] in seen:
            continue
        shot = shot_of(value)
        # Shots of one place share their text and settings: hold one copy of each.
        text = interned.setdefault(shot.text, shot.text)
        context = interned.setdefault(shot.context, shot.context)
        seen[value[0]] = Shot(shot.item_id, shot.key, text, shot.seed, shot.loras, context,
                              shot.flags, shot.preset)  # fmt: skip
    return [seen[k] for k in sorted(seen)]


def bucket_details(spill: Spill, bucket: int) -> Iterator[tuple[str, str, dict]]:
    """(item_id, infotext, metadata row) of each row in one bucket, the first of each item."""
    seen: set[str] = set()
    for item_id, infotext, row in spill.read(DETAILS, bucket):
        if item_id not in seen:
            seen.add(item_id)
            yield item_id, infotext, row
