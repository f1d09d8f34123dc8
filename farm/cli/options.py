"""Exit codes and the options several `farm` commands share."""

from __future__ import annotations

import os

import click

# Exit codes: 0 ok, 1 the job failed (resumable), 2 bad input (farm.errors.EXIT_BAD_INPUT).
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def dtype_option(command):
    """--dtype: the GPU workers' precision; workers (local or on a cluster) inherit it."""

    def apply(ctx: click.Context, _param, value: str | None) -> None:
        if value:
            os.environ["FARM_DTYPE"] = value

    return click.option(
        "--dtype",
        type=click.Choice(["float16", "bfloat16"]),
        expose_value=False,
        callback=apply,
        help="GPU precision (default: float16, bfloat16 for the transformer families: "
        "Flux.1, Chroma, Qwen-Image, Z-Image; CPU workers use float32).",
    )(command)


def s3_endpoint_option(command):
    """--s3-endpoint: an S3-compatible endpoint; local Ray workers inherit it."""

    def apply(ctx: click.Context, _param, value: str | None) -> None:
        if value:
            os.environ["AWS_ENDPOINT_URL_S3"] = value

    return click.option(
        "--s3-endpoint",
        metavar="URL",
        expose_value=False,
        callback=apply,
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or the profile's).",
    )(command)


ADDRESS_HELP = "Jobs API of the Ray cluster, e.g. http://127.0.0.1:8265 (RAY_API_SERVER_ADDRESS)."


def address_option(command):
    """--address for the commands that talk to a cluster's Jobs API."""
    return click.option(
        "--address", required=True, envvar="RAY_API_SERVER_ADDRESS", help=ADDRESS_HELP
    )(command)


def local_option(command):
    """--local: render in the driver's process, without starting Ray."""
    return click.option(
        "--local",
        is_flag=True,
        help="Render here with one worker, without starting Ray (small jobs).",
    )(command)


def check_local(local: bool, **placement) -> None:
    """--local keeps one worker in this process: a flag that places workers elsewhere or
    asks for more cannot hold."""
    for name, value in placement.items():
        if local and value is not None:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag}: --local renders with one worker in this process; "
                                   f"drop {flag}, or drop --local to render on Ray")  # fmt: skip


def worker_wait_option(command):
    return click.option(
        "--worker-wait",
        type=click.FloatRange(min=1),
        metavar="SECONDS",
        help="Stop (resumably) when no worker has been up this long; default 300.",
    )(command)


def max_items_option(command):
    from farm.limits import MAX_ITEMS

    return click.option(
        "--max-items",
        type=click.IntRange(min=1),
        metavar="N",
        help=f"Refuse jobs of more than N items (default {MAX_ITEMS:,}).",
    )(command)


def tenant_options(command):
    """--tenants (the tenants file) and --tenant (whom the command acts for)."""
    command = click.option(
        "--tenant",
        envvar="FARM_TENANT",
        metavar="NAME",
        help="Act for this tenant: only its prefix is reachable (FARM_TENANT).",
    )(command)
    return click.option(
        "--tenants",
        "tenants_file",
        envvar="FARM_TENANTS",
        metavar="FILE",
        help="tenants.yaml, a local path or s3:// URL (FARM_TENANTS).",
    )(command)
