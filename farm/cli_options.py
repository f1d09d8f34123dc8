"""Exit codes and the options several `farm` commands share."""

from __future__ import annotations

import os

import click

# Exit codes: 0 ok, 1 the job failed (resumable), 2 bad input.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
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
        help="GPU precision (default float16; CPU workers use float32).",
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
