"""A training run's checkpoints, found and put in training order, to sweep one at a time.

After a run, people hold ten or twenty checkpoints. kohya sd-scripts saves
`name-000004.safetensors` (epoch 4) or `name-step00001000.safetensors` (step 1000), and
`name.safetensors` at the end; ai-toolkit saves `name_000001000.safetensors` (step 1000),
and `name.safetensors` at the end. A spec's `checkpoints:` names the run's folder, a list
of its files, or `{dir: DIR, every: N, last: K}`.

Training order, one clock for all of a run's files:
1. The steps in the files' own metadata, when every file carries them: kohya's `ss_steps`
   (the global step when the file was saved; `ss_max_train_steps` is the planned total
   and `ss_epoch` of a step save counts the epoch in progress from 0, so neither orders
   anything) or ai-toolkit's `training_info` step. Metadata wins over names: it survives
   a rename. kohya saves a step checkpoint and the final one at the same step when the
   step count is a multiple of save_every_n_steps, so the final file (no number in its
   name) goes after a save at its own step.
2. Otherwise, or when two numbered files' metadata gives the same step (a version that
   recorded the planned total, or a run resumed without its step count), the number in
   the names: steps (`-step00001000`, `_000001000`) or epochs (`-000004`), never both,
   with the one file without a number, the final save, last.
A folder whose files neither clock orders is refused, naming them; a list is the user's
own choice, so one that cannot be ordered is swept in the order it is written.

Only headers are read (no tensor data, no hashes), so a folder of twenty 200 MB
checkpoints is ordered at once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import show, suggest
from farm.limits import PICKLE_SUFFIXES
from farm.loras.families import LoraKeys, Recognised, family_of, transformer_family
from farm.loras.files import LoraError, detect_layout, modules, read_header

# One run's checkpoints: every file's header is read to order them, and each one kept is
# a column of the sweep. Tens are routine, thousands are a wrong folder.
MAX_CHECKPOINTS = 1000
SUFFIX = ".safetensors"
KEYS = ("dir", "every", "last")
# kohya: "{name}-step{:08d}" and "{name}-{:06d}" (epoch); ai-toolkit: "{name}_{:09d}" (step).
_NUMBERED = re.compile(
    r"(?P<stem>.+?)(?:-step(?P<kohya_step>\d{8,})|-(?P<epoch>\d{6,})|_(?P<step>\d{9,}))"
)


class CheckpointError(LoraError):
    """A run's checkpoints that farm cannot sweep: str() names the field, the files and
    what to do, on one line."""


@dataclass(frozen=True)
class Checkpoint:
    path: str  # absolute
    name: str  # the file name
    step: int | None  # steps trained: the metadata's when it ordered the run, else the name's
    # Epochs trained: the name's (kohya's -000004), or ss_epoch for a file named without a
    # number (kohya's final save). A step save's ss_epoch counts from 0 and is not used.
    epoch: int | None
    # The sort key, (after_numbered, number, final): (0, step, final) by metadata;
    # (0, step or epoch, 0) by name, with the final save (1, 0, 1); (0, position, 0) for a
    # list kept in its written order.
    order: tuple

    def as_dict(self) -> dict:
        """As job.json keeps it: a stored job's plan is rebuilt without reading the files."""
        return {"path": self.path, "name": self.name, "step": self.step, "epoch": self.epoch,
                "order": list(self.order)}  # fmt: skip


def resolved_checkpoints(value: Any, where: str) -> list[Checkpoint]:
    """The checkpoints job.json recorded (`{resolved: [...]}`), checked for shape only:
    planning reads and hashes every file again, as it does any LoRA path."""
    if not isinstance(value, list) or not value:
        raise CheckpointError(f"{where}.resolved: expected a list of checkpoints")
    out = []
    for i, c in enumerate(value):
        ok = isinstance(c, dict) and isinstance(c.get("path"), str) and isinstance(
            c.get("name"), str) and all(c.get(k) is None or _whole(c.get(k)) is not None
                                        for k in ("step", "epoch"))  # fmt: skip
        if not ok or not isinstance(c.get("order"), list):
            raise CheckpointError(f"{where}.resolved[{i}]: expected {{path, name, step, epoch, "
                                  "order}")  # fmt: skip
        if not c["name"].endswith(SUFFIX) or "/" in c["name"] or "\\" in c["name"]:
            raise CheckpointError(f"{where}.resolved[{i}].name: not a .safetensors file name")
        out.append(Checkpoint(c["path"], c["name"], c.get("step"), c.get("epoch"),
                              tuple(c["order"])))  # fmt: skip
    return out


@dataclass(frozen=True)
class _File:
    path: Path
    name: str
    kind: str  # what the name counts: "step", "epoch", or "" (no number: the final save)
    number: int | None
    meta_step: int | None
    meta_epoch: int | None
    layout: str
    family: Recognised

    @property
    def run(self) -> tuple:
        """What every file of one run shares."""
        return self.layout, self.family.name, self.family.context, self.family.width


@dataclass(frozen=True)
class _Unordered:
    names: list[str]
    reason: str


def find_checkpoints(value: Any, base: Path, where: str,
                     known: Sequence[LoraKeys] = ()) -> list[Checkpoint]:  # fmt: skip
    """The checkpoints a spec's `checkpoints:` names, in training order.

    `value` is a folder (its `.safetensors` files, not those of subfolders), a list of
    files, or {dir, every, last}; relative paths are read from `base`; `where` is the
    field that messages name (`loras[0].checkpoints`); `known`: the transformer families
    to tell files apart by (farm.families.LORA_KEYS).
    """
    if isinstance(value, dict):
        folder, every, last = _mapping(value, where)
        return _thin(_from_folder(folder, base, where, f"{where}.dir", known), every, last)
    if isinstance(value, str | Path):
        return _from_folder(value, base, where, where, known)
    if isinstance(value, list | tuple):
        return _from_list(value, base, where, known)
    raise CheckpointError(
        f"{where}: expected the run's folder, a list of its files or {{dir, every, last}}, "
        f"got {show(value)}"
    )


def _mapping(value: dict, where: str) -> tuple[Any, int, int | None]:
    for key in value:
        if key not in KEYS:
            hint = suggest(key, KEYS) or f" (known: {', '.join(KEYS)})"
            raise CheckpointError(f"{where}.{key}: unknown key{hint}")
    if value.get("dir") is None:
        raise CheckpointError(f"{where}.dir: missing: give the folder the run was saved to")
    every = value.get("every")
    last = value.get("last")
    return (
        value["dir"],
        1 if every is None else _positive(every, f"{where}.every"),
        None if last is None else _positive(last, f"{where}.last"),
    )


def _positive(value: Any, at: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise CheckpointError(f"{at}: expected a positive whole number, got {show(value)}")


def _thin(ordered: list[Checkpoint], every: int, last: int | None) -> list[Checkpoint]:
    """Every `every`th checkpoint counted back from the last, so the final one is always
    kept; then the last `last` of those."""
    n = len(ordered)
    kept = [c for i, c in enumerate(ordered) if (n - 1 - i) % every == 0]
    return kept[-last:] if last else kept


def _from_folder(text: Any, base: Path, where: str, at: str,
                 known: Sequence[LoraKeys] = ()) -> list[Checkpoint]:  # fmt: skip
    if not isinstance(text, str | Path) or not str(text).strip():
        raise CheckpointError(f"{at}: expected the path of the run's folder, got {show(text)}")
    folder = _local(text, base)
    if not folder.exists():
        raise CheckpointError(
            f"{at}: no folder {folder}: check the path (a relative one is read from {base})"
        )
    if not folder.is_dir():
        raise CheckpointError(
            f"{at}: {folder} is a file, not a folder: give the run's folder, or a list of files"
        )
    try:
        # scandir, not glob: a folder or file name with [ or * in it is taken as written.
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise CheckpointError(f"{at}: cannot read folder {folder} ({err.strerror})") from None
    paths: list[Path] = []
    others: list[str] = []
    seen: dict[Path, str] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue  # editors' temporary files and macOS's ._ copies hold no weights
        if not entry.name.lower().endswith(SUFFIX):
            if entry.is_file():
                others.append(entry.name)
            continue
        path = folder / entry.name
        real = path.resolve()
        if entry.is_symlink() and real.parent != folder:
            raise CheckpointError(
                f"{at}: {entry.name} links to {real}, outside {folder}: copy the file into "
                "the folder or list it"
            )
        if not real.is_file():
            raise CheckpointError(f"{at}: {entry.name} in {folder} is not a readable file")
        if real in seen:
            raise CheckpointError(
                f"{at}: {seen[real]} and {entry.name} are the same file (one links to the "
                "other): remove the link or list the files"
            )
        seen[real] = entry.name
        paths.append(path)
    if len(paths) > MAX_CHECKPOINTS:
        raise CheckpointError(
            f"{at}: {folder} holds {len(paths):,} .safetensors files, more than the "
            f"{MAX_CHECKPOINTS:,} checkpoints farm takes from one run: move older saves out "
            "or list the files to sweep"
        )
    if not paths and others:
        pickles = [n for n in others if Path(n).suffix.lower() in PICKLE_SUFFIXES]
        todo = (
            "convert the checkpoints to .safetensors (pickle files can run code when loaded)"
            if pickles
            else "point it at the folder the trainer saved the run to"
        )
        raise CheckpointError(
            f"{at}: {folder} holds no .safetensors files ({_count(len(others), 'other file')}: "
            f"{_names(others)}): {todo}"
        )
    if not paths:
        raise CheckpointError(
            f"{at}: folder {folder} is empty: point it at the folder the trainer saved the run to"
        )
    return _ordered([_read(p, where, known) for p in paths], where, listed=False)


def _from_list(value: list | tuple, base: Path, where: str,
               known: Sequence[LoraKeys] = ()) -> list[Checkpoint]:  # fmt: skip
    if not value:
        raise CheckpointError(f"{where}: the list is empty: give the run's files, or its folder")
    if len(value) > MAX_CHECKPOINTS:
        raise CheckpointError(
            f"{where}: {len(value):,} files, more than the {MAX_CHECKPOINTS:,} checkpoints "
            "farm takes from one run: list fewer"
        )
    paths: list[Path] = []
    seen: dict[Path, int] = {}
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, str | Path) or not str(item).strip():
            raise CheckpointError(f"{at}: expected the path of a checkpoint, got {show(item)}")
        path = _local(item, base)
        if not path.name.lower().endswith(SUFFIX):
            raise CheckpointError(
                f"{at}: {path.name} is not a .safetensors file: farm sweeps .safetensors "
                "checkpoints (convert a .ckpt or .pt one first)"
            )
        if not path.is_file():
            raise CheckpointError(
                f"{at}: no file {path}: check the path (a relative one is read from {base})"
            )
        if path in seen:
            raise CheckpointError(
                f"{at}: {path.name} is listed twice (also {where}[{seen[path]}]): give each "
                "checkpoint once"
            )
        seen[path] = i
        paths.append(path)
    return _ordered([_read(p, where, known) for p in paths], where, listed=True)


def _local(text: str | Path, base: Path) -> Path:
    path = Path(text).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _read(path: Path, where: str, known: Sequence[LoraKeys] = ()) -> _File:
    """One checkpoint's header: its layout, family, metadata steps and name number."""
    try:
        header, metadata = read_header(path)
        layout = detect_layout(list(header), path)
        mods = modules(header, layout, path)
    except LoraError as err:
        raise CheckpointError(f"{where}: {err}") from None
    family = transformer_family(mods, known) or family_of(mods)
    kind, number = "", None
    if m := _NUMBERED.fullmatch(path.name[: -len(SUFFIX)]):
        kind = "epoch" if m["epoch"] else "step"
        number = int(m["epoch"] or m["kohya_step"] or m["step"])
    return _File(path, path.name, kind, number, _meta_step(metadata),
                 _whole(metadata.get("ss_epoch")), layout, family)  # fmt: skip


def _meta_step(metadata: dict[str, str]) -> int | None:
    """The step a file was saved at, by its own metadata: kohya's ss_steps, else the step
    in ai-toolkit's training_info."""
    if "ss_steps" in metadata:
        return _whole(metadata["ss_steps"])
    try:
        info = json.loads(metadata.get("training_info", ""))
    except (json.JSONDecodeError, RecursionError):
        return None
    return _whole(info.get("step")) if isinstance(info, dict) else None


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _ordered(files: list[_File], where: str, listed: bool) -> list[Checkpoint]:
    _one_run(files, where, listed)
    by_meta = _by_metadata(files)
    used_meta = isinstance(by_meta, list)
    orders = by_meta if isinstance(by_meta, list) else _by_name(files)
    if isinstance(orders, _Unordered):
        if not listed:
            # A metadata clash (every file carried ss_steps) is the cause the names met too.
            problem = by_meta if isinstance(by_meta, _Unordered) else orders
            raise CheckpointError(
                f"{where}: cannot tell the training order of {_names(problem.names)}: "
                f"{problem.reason}: list the files in training order"
            )
        orders = [(0, i, 0) for i in range(len(files))]
    out = [
        Checkpoint(
            str(f.path),
            f.name,
            f.meta_step if used_meta else (f.number if f.kind == "step" else None),
            f.number if f.kind == "epoch" else (f.meta_epoch if not f.kind else None),
            order,
        )
        for f, order in zip(files, orders, strict=True)
    ]
    return sorted(out, key=lambda c: (c.order, c.name))


def _by_metadata(files: list[_File]) -> list[tuple] | _Unordered | None:
    """Orders by the metadata's steps; None when a file carries none."""
    if any(f.meta_step is None for f in files):
        return None
    orders = [(0, f.meta_step, 0 if f.kind else 1) for f in files]
    if clash := _clash(files, orders, "step"):
        return _Unordered(clash[0], f"their ss_steps metadata puts {clash[1]}, and their names "
                                    "do not tell them apart")  # fmt: skip
    return orders


def _by_name(files: list[_File]) -> list[tuple] | _Unordered:
    finals = [f.name for f in files if not f.kind]
    if len(finals) > 1:
        carrying = sum(f.meta_step is not None for f in files)
        meta = (
            "the files carry no ss_steps metadata"
            if not carrying
            else f"{len(files) - carrying} of the {len(files)} files "
            f"{'carries' if len(files) - carrying == 1 else 'carry'} no ss_steps metadata"
        )
        return _Unordered(finals, f"their names have no step or epoch number (only the final "
                                  f"save may lack one) and {meta}")  # fmt: skip
    epochs = [f.name for f in files if f.kind == "epoch"]
    steps = [f.name for f in files if f.kind == "step"]
    if epochs and steps:
        others = "1 other counts" if len(steps) == 1 else f"{len(steps)} others count"
        return _Unordered(epochs, f"their names count epochs while {others} steps, and "
                                  "without ss_steps metadata on every file epochs cannot be "
                                  "set against steps")  # fmt: skip
    orders = [(0, f.number, 0) if f.kind else (1, 0, 1) for f in files]
    if clash := _clash(files, orders, "epoch" if epochs else "step"):
        return _Unordered(clash[0], f"their names put {clash[1]}")
    return orders


def _clash(files: list[_File], orders: list[tuple], unit: str) -> tuple[list[str], str] | None:
    """The files that share a sort key, and what they share (`both at step 1000`)."""
    groups: dict[tuple, list[str]] = {}
    for f, order in zip(files, orders, strict=True):
        groups.setdefault(order, []).append(f.name)
    shared = [(order, names) for order, names in sorted(groups.items()) if len(names) > 1]
    if not shared:
        return None
    names = [n for _, group in shared for n in group]
    if len(shared) == 1:
        ((order, group),) = shared
        return names, f"{'both' if len(group) == 2 else f'all {len(group)}'} at {unit} {order[1]}"
    at = ", ".join(f"{unit} {order[1]}" for order, _ in shared[:3])
    return names, f"them in twos or more at the same {unit} ({at})"


def _one_run(files: list[_File], where: str, listed: bool) -> None:
    """Refuse files of another run: another layout, family or width."""
    groups: dict[tuple, list[_File]] = {}
    for f in files:
        groups.setdefault(f.run, []).append(f)
    if len(groups) == 1:
        return
    ranked = sorted(groups.values(), key=len, reverse=True)
    # Spell out context or width only where the family names alone do not tell runs apart.
    detailed = len({(g[0].layout, g[0].family.name) for g in ranked}) < len(ranked)
    if len(ranked[0]) == len(ranked[1]):
        parts = [f"{len(g)} {'is' if len(g) == 1 else 'are'} "
                 f"{_what(g[0], detailed, plural=len(g) > 1)} ({_names([f.name for f in g])})"
                 for g in ranked]  # fmt: skip
        todo = "list one run's files" if listed else "keep one run's files there or list them"
        raise CheckpointError(
            f"{where}: the files are from more than one run: {'; '.join(parts)}: {todo}"
        )
    run = ranked[0]
    strays = sorted((f for g in ranked[1:] for f in g), key=lambda f: f.name)
    first, more = strays[0], len(strays) - 1
    theirs = f"the run's other {len(run)} files are {_what(run[0], detailed, plural=True)}"
    them = "it" if not more else "them"
    todo = (
        f"take {them} out of the list"
        if listed
        else f"move {them} out of the folder or list the files"
    )
    also = (
        f", and {_count(more, 'more file')} {'is' if more == 1 else 'are'} not from the run "
        f"either ({_names([f.name for f in strays[1:]])})"
        if more
        else ""
    )
    raise CheckpointError(
        f"{where}: {first.name} is {_what(first, detailed)}{also}; {theirs}: {todo}"
    )


def _what(f: _File, detailed: bool, plural: bool = False) -> str:
    """`a kohya-layout SDXL LoRA`, or `peft-layout SD1.x LoRAs`."""
    lora = "LoRAs" if plural else "LoRA"
    if f.family.name == "unknown":
        text = f"{f.layout}-layout {lora} for an unrecognised model ({f.family.detail})"
    else:
        family = str(f.family) if detailed else f.family.name
        text = f"{f.layout}-layout {family} {lora}"
    return text if plural else f"a {text}"


def _names(names: list[str]) -> str:
    """The first three names and how many more."""
    shown = ", ".join(names[:3])
    return shown if len(names) <= 3 else f"{shown} and {len(names) - 3} more"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"
