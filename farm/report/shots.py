"""A job's images as the report sees them: one Shot per planned item, rendered or not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from farm.plan.stored import stored_plan
from farm.plan.sweep import expand
from farm.records.parts import METADATA, iter_compacted, iter_parts
from farm.spec.prompts import PromptError, parse_prompt
from farm.spec.strength import format_number, schedule_text
from farm.storage.store import Store

# The columns a report needs; the rest of a row is read only for the gallery's details.
COLUMNS = [
    "item_id", "prompt", "negative_prompt", "seed", "model", "model_hash", "loras", "preset",
    "steps", "guidance", "scheduler", "width", "height", "catalog", "image_key", "flags",
]  # fmt: skip


@dataclass(frozen=True)
class LoraSetting:
    name: str
    weight: float
    # What else shapes this LoRA's effect (a text-encoder share, blocks, a schedule): a
    # series holds it fixed while the weight moves.
    shape: str = ""


@dataclass(frozen=True)
class Shot:
    item_id: str
    key: str | None  # the image's store key; None while the item is not rendered
    text: str  # the prompt as the text encoder sees it: LoRA tags removed
    seed: int
    loras: tuple[LoraSetting, ...]
    # Everything else that affects the pixels, as (name, value) pairs: negative prompt,
    # model, steps, guidance, scheduler, size and catalog fields.
    context: tuple[tuple[str, str], ...]
    flags: tuple[str, ...] = ()
    preset: str | None = None

    def weight(self, lora: str) -> float:
        """This shot's strength of a LoRA; a LoRA it does not use is at 0."""
        return next((x.weight for x in self.loras if x.name == lora), 0.0)

    def setting(self, name: str) -> str | None:
        return dict(self.context).get(name)


def row_tables(store: Store, doc: dict, corrupt: list[str],
               columns: list[str] | None = COLUMNS) -> Iterator[pa.Table]:  # fmt: skip
    """The job's rows, a table at a time; unreadable parts are added to `corrupt`."""
    # A finished job's rows are in one file; a running or stopped one has only parts.
    if doc.get("status") == "done" and store.exists(METADATA):
        yield from iter_compacted(store, columns)
        return
    for key, table in iter_parts(store, columns):
        if isinstance(table, pa.Table):
            yield table
        else:
            corrupt.append(key)


def shot_from_row(row: dict) -> Shot:
    loras = tuple(
        LoraSetting(x["name"], float(x["weight"]), _shape(x["te_weight"], x["unet_weight"],
                                                          x["blocks"], x["schedule"]))
        for x in row["loras"] or ()
    )  # fmt: skip
    return Shot(
        item_id=row["item_id"],
        key=row["image_key"],
        text=_text(row["prompt"]),
        seed=int(row["seed"]),
        loras=loras,
        context=_context(row),
        flags=tuple(row["flags"] or ()),
        preset=row["preset"],
    )


def planned_shots(store: Store, doc: dict) -> Iterator[Shot]:
    """Shots for every item job.json plans, none of them rendered (key None)."""
    plan = stored_plan(store, doc)
    for item in expand(plan):
        r = item.render_of(plan.spec.render)  # a prompt file's line may set its own
        row = {
            "negative_prompt": item.negative_prompt, "model": plan.spec.model,
            "steps": r.steps, "guidance": r.guidance, "scheduler": r.scheduler,
            "width": r.width, "height": r.height,
            "catalog": [{"key": k, "value": v} for k, v in item.catalog],
        }  # fmt: skip
        loras = tuple(
            LoraSetting(name, s.weight, _shape(s.te, s.unet, s.blocks.name if s.blocks else None,
                                               _schedule(s)))
            for name, s in item.loras
        )  # fmt: skip
        yield Shot(item.item_id, None, item.text, item.seed, loras, _context(row))


def _schedule(strength) -> str | None:
    return schedule_text(strength.schedule) if strength.schedule else None


def _shape(te: float | None, unet: float | None, blocks: str | None, schedule: str | None) -> str:
    parts = []
    if te is not None and unet is not None and te != unet:
        # The text encoder's share: the same split at every weight is one series.
        parts.append(f"te={format_number(te / unet) if unet else format_number(te)}x")
    if blocks:
        parts.append(f"blocks={blocks}")
    if schedule:
        parts.append(f"schedule={schedule}")
    return " ".join(parts)


def _text(prompt: str) -> str:
    try:
        text, _ = parse_prompt(prompt)
    except PromptError:
        return prompt
    return " ".join(text.split())


def _context(row: dict) -> tuple[tuple[str, str], ...]:
    pairs = [
        ("negative prompt", row.get("negative_prompt") or ""),
        ("model", row.get("model") or ""),
        ("steps", str(row.get("steps"))),
        ("guidance", format_number(float(row["guidance"])) if row.get("guidance") is not None
         else ""),
        ("scheduler", row.get("scheduler") or ""),
        ("size", f"{row.get('width')}x{row.get('height')}"),
    ]  # fmt: skip
    pairs += [(f"catalog.{c['key']}", c["value"]) for c in row.get("catalog") or ()]
    return tuple(pairs)


def detail_row(row: dict) -> dict:
    """A metadata row made JSON-safe for the gallery (timestamps as text)."""
    return json.loads(json.dumps(row, default=str))
