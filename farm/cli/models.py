"""`farm model` and `farm lora`: the tiny model, its training, and LoRA files."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from farm.errors import EXIT_BAD_INPUT


@click.group()
def model() -> None:
    """Models: write the embedded tiny pipeline, or train it again from a seed."""


@model.command("tiny")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def model_tiny(out: Path) -> None:
    """Write the embedded tiny SD-1.5-architecture pipeline (diffusers format) to OUT."""
    from farm.render.tiny import ensure_tiny

    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").exists():
        click.echo(f"error: {out}: folder exists and is not empty; pick a new folder", err=True)
        sys.exit(EXIT_BAD_INPUT)
    with _writing(out):
        click.echo(f"tiny model: {ensure_tiny(out)}")


BASE_FILES = ("unet.safetensors", "vae.safetensors", "text_encoder.safetensors")


@model.command("train-tiny")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the pictures, the initial weights and every random draw.")  # fmt: skip
@click.option("--smoke", is_flag=True, help="A few steps of every stage, to check the script.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Torch threads; a seed and thread count give the same bytes.")  # fmt: skip
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=0,
    metavar="STEPS",
    help="Also keep the UNet and text encoder every STEPS steps, in "
    "OUT/checkpoints/, and each LoRA's, as a training run a spec sweeps "
    "(checkpoints: OUT/checkpoints/neon); the final weights stay the same.",
)
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Train only the LoRAs, on the unet, vae and text_encoder in this folder "
                   "(such as farm/tiny/weights/tiny-v3).")  # fmt: skip
def model_train_tiny(out: Path, seed: int, smoke: bool, threads: int,
                     checkpoint_every: int, base: Path | None) -> None:  # fmt: skip
    """Train the tiny model and its neon and ink LoRAs from scratch into OUT.

    The pictures are drawn by the script itself. OUT gets unet, vae, text_encoder, neon
    (kohya) and ink (PEFT) as fp16 .safetensors, the files farm ships in
    farm/tiny/weights/, and training.json with the recipe, losses and times.
    """
    from dataclasses import replace

    if out.exists() and any(out.iterdir()):
        click.echo(f"error: {out}: folder exists and is not empty; pick a new folder", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if base is not None:
        missing = [n for n in BASE_FILES if not (base / n).is_file()]
        if missing:
            click.echo(f"error: --base {base}: no {missing[0]}; give a folder with "
                       f"{', '.join(BASE_FILES)}", err=True)  # fmt: skip
            sys.exit(EXIT_BAD_INPUT)
    from farm.training.recipe import SMOKE, Recipe
    from farm.training.tiny import train

    recipe = replace(SMOKE if smoke else Recipe(), seed=seed, threads=threads)
    with _writing(out):
        record = train(out, recipe, log=click.echo, checkpoint_every=checkpoint_every,
                       base=base)  # fmt: skip
    click.echo(f"trained in {record['seconds']} s: {out}")


@click.group()
def lora() -> None:
    """LoRA files: inspect them; demo LoRAs for the tiny model."""


@lora.command("demo")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def lora_demo(out: Path) -> None:
    """Write the tiny model's demo LoRAs to OUT: neon (kohya) and ink (PEFT) as trained,
    and their twins in the other layout (neon-peft, ink-kohya)."""
    from farm.loras.demo import DEMO_LORAS, write_demo_lora

    with _writing(out):
        for name, demo in DEMO_LORAS.items():
            click.echo(write_demo_lora(demo, out / f"{name}.safetensors"))


@contextlib.contextmanager
def _writing(out: Path):
    """A folder the user named that cannot be written is bad input, said in one line."""
    try:
        yield
    except OSError as err:
        why = err.strerror or type(err).__name__
        click.echo(f"error: {out}: cannot write there ({why}); pick a folder you can write",
                   err=True)  # fmt: skip
        sys.exit(EXIT_BAD_INPUT)


@lora.command("inspect")
@click.argument("path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--model", metavar="MODEL",
              help="Also say what of the file applies to this model (tiny, a diffusers "
                   "folder, s3:// folder or hub id): tensors applied and dropped.")  # fmt: skip
def lora_inspect(path: str, as_json: bool, model: str | None) -> None:
    """Format, rank, alpha, targeted blocks, base-model family, hashes and ss_* metadata.

    FILE is a .safetensors LoRA, or tiny:NAME for a demo LoRA.
    """
    from farm.families import LORA_KEYS
    from farm.loras.describe import describe_lora
    from farm.loras.files import LoraError

    if path.startswith("tiny:"):
        from farm.loras.demo import demo_lora_path

        try:
            path = str(demo_lora_path(path))
        except KeyError as err:
            raise LoraError(err.args[0]) from None
    report = describe_lora(path, LORA_KEYS)
    fit = _fit(path, model) if model else None
    if as_json:
        click.echo(json.dumps(report.as_dict() | ({"model": fit} if fit else {}), indent=2))
        return
    rows = report.rows()
    if fit and fit["applied"] is None:  # a UNet model whose layers are not local
        rows += [("model", f"{model} ({fit['family']})"),
                 ("applied", "not known: the model's weights are not on this machine")]  # fmt: skip
    elif fit:
        dropped = f"{fit['dropped']}" + (f" ({', '.join(fit['dropped_names'][:5])}"
                                         f"{', …' if fit['dropped'] > 5 else ''})"
                                         if fit["dropped_names"] else "")  # fmt: skip
        rows += [("model", f"{model} ({fit['family']})"),
                 ("applied", f"{fit['applied']} tensors"), ("dropped", dropped)]  # fmt: skip
    width = max(len(key) for key, _ in rows) + 1
    for key, value in rows:
        click.echo(f"{key + ':':<{width}} {value}")


def _fit(path: str, model: str) -> dict:
    """What of the LoRA applies to the model: its family checked (a wrong family is
    refused as `farm run` refuses it) and its tensors placed on the model's layers."""
    from pathlib import Path

    from farm.families import check_compatible
    from farm.families.placement import place
    from farm.plan.model_refs import read_model

    info = read_model(model)
    check_compatible(path, info, model)
    if info.family.denoiser == "unet" and info.root is None and model != "tiny":
        return {"family": info.family.name, "applied": None, "dropped": None,
                "dropped_names": []}  # fmt: skip
    placed = place(path, info, Path(info.root) if info.root else None)
    return {"family": info.family.name} | placed.as_dict()
