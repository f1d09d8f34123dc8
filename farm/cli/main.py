"""The `farm` command line. Thin: parse, call, print. Heavy imports stay inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from farm import __version__
from farm.cli.models import lora as lora_command
from farm.cli.models import model as model_command
from farm.cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    address_option,
    check_local,
    dtype_option,
    local_option,
    max_items_option,
    s3_endpoint_option,
    tenant_options,
    worker_wait_option,
)
from farm.cli.report import report as report_command
from farm.cli.report import report_options, write_report
from farm.cli.tenants import guard_job, load_config
from farm.cli.tenants import presets as presets_command
from farm.errors import EXIT_BAD_INPUT, FarmError


class FarmGroup(click.Group):
    """Turns a FarmError into one line on stderr and its exit code (2: bad input)."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as err:
            click.echo(err.format_message())  # `farm lora` alone: its help
            sys.exit(0)
        except click.UsageError as err:
            # Click's own three lines (usage, hint, error) as one, its suggestion kept.
            message = " ".join(err.format_message().split())
            command = err.ctx.command_path if err.ctx else "farm"
            click.echo(f"error: {message} (see `{command} --help`)", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as err:
            click.echo(f"error: {' '.join(err.format_message().split())}", err=True)
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FarmError as err:  # one line, URLs redacted (farm/errors.py)
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            # Outside rendering nothing is half-written: stop without a traceback.
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=FarmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="farm")
def main() -> None:
    """farm renders LoRA strength sweeps on a Ray cluster, exactly once, resumably."""


def _load(spec_path: str, output: str | None, tenants_file: str | None = None,
          tenant: str | None = None):  # fmt: skip
    """The spec, resolved against the tenants file if any, and its tenant (or None)."""
    from farm.spec import load_spec, with_output
    from farm.tenancy.policy import enforce, resolver

    config = load_config(tenants_file)
    spec = load_spec(spec_path, resolver(config, tenant))
    # An empty --output is a mistake to report, not a reason to fall back to the spec's.
    spec = with_output(spec, output, "--output") if output is not None else spec
    return spec, enforce(spec, config)


@main.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--output", "-o", help="Local folder or s3://bucket/prefix (overrides the spec).")
@click.option("--address", help="Ray cluster address; default: a private local Ray.")
@click.option("--workers", type=click.IntRange(min=1), help="Number of render workers.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="GPUs per worker, e.g. 0.5.")
@local_option
@worker_wait_option
@max_items_option
@dtype_option
@s3_endpoint_option
@click.option("--report", "with_report", is_flag=True, help="Then write the job's report.")
@report_options
@tenant_options
def run(spec_path: str, output: str | None, address: str | None, workers: int | None,
        gpus_per_worker: float | None, local: bool, worker_wait: float | None,
        max_items: int | None, with_report: bool, max_pixels: int,
        cell_px: int, tenants_file: str | None, tenant: str | None) -> None:  # fmt: skip
    """Plan SPEC, then render every item not yet rendered."""
    check_local(local, address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    spec, policy = _load(spec_path, output, tenants_file, tenant)
    sheets = {"max_pixels": max_pixels, "cell_px": cell_px} if with_report else None
    _run(spec, sheets, workers=workers, gpus_per_worker=gpus_per_worker, address=address,
         worker_wait=worker_wait, max_items=max_items, tenant=policy, local=local)  # fmt: skip


@main.command()
@click.argument("job_url")
@click.option("--address", help="Ray cluster address; default: a private local Ray.")
@click.option("--workers", type=click.IntRange(min=1), help="Number of render workers.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="GPUs per worker.")
@local_option
@worker_wait_option
@dtype_option
@s3_endpoint_option
@click.option("--report", "with_report", is_flag=True, help="Then write the job's report.")
@report_options
@tenant_options
def resume(job_url: str, address: str | None, workers: int | None,
           gpus_per_worker: float | None, local: bool, worker_wait: float | None,
           with_report: bool, max_pixels: int, cell_px: int, tenants_file: str | None,
           tenant: str | None) -> None:  # fmt: skip
    """Finish the job at JOB_URL from its stored job.json."""
    from farm.run.job import stored_policy
    from farm.storage import open_store

    check_local(local, address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    config = guard_job(job_url, tenants_file, tenant)
    # A tenant can rewrite its own job.json: the job is held to the tenant's policy as it
    # is now, on what job.json says (run_job checks the plan too).
    doc, spec, policy = stored_policy(open_store(job_url), config)
    # The job was accepted when it started: its size needs no second --max-items.
    sheets = {"max_pixels": max_pixels, "cell_px": cell_px} if with_report else None
    _run(spec, sheets, workers=workers, gpus_per_worker=gpus_per_worker, address=address,
         worker_wait=worker_wait, max_items=doc["plan"]["items"], tenant=policy,
         local=local)  # fmt: skip


def _run(spec, report_to: dict | None, **options) -> None:
    import signal

    from farm.run.job import run_job

    # `ray job stop` and container shutdowns send SIGTERM: stop like Ctrl-C, letting the
    # units in flight finish and recording the run, so a resume picks up cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    result = run_job(spec, echo=click.echo, **options)
    url = result.job_url
    if result.rendered:
        rate = result.rendered / result.seconds if result.seconds else 0.0
        click.echo(f"rendered {result.rendered} images in {result.seconds:.1f}s ({rate:.2f} img/s)")
    click.echo(f"images:   {url}/images/")
    click.echo(f"metadata: {url}/metadata.parquet")
    if report_to is not None:
        # A report of an unfinished job is still useful: it shows what exists and what not.
        write_report(url, **report_to)
    if not result.ok:
        missing = result.planned - result.already_done - result.rendered
        why = result.stopped or ("interrupted" if result.interrupted else "some units failed")
        click.echo(
            f"job incomplete ({why}): {missing} items not rendered; "
            f"`farm resume {url}` renders them",
            err=True,
        )
        sys.exit(EXIT_FAILED)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@main.command()
@click.argument("spec_path", metavar="SPEC")
@address_option
@click.option("--output", "-o", help="s3://bucket/prefix (overrides the spec).")
@click.option("--workers", type=click.IntRange(min=1), help="Number of render workers.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="GPUs per worker, e.g. 0.5.")
@click.option(
    "--paths-on-cluster",
    is_flag=True,
    help="Use the spec's paths as they are: every node has them (shared filesystem).",
)
@click.option(
    "--s3-endpoint", metavar="URL", help="S3-compatible endpoint as the cluster's nodes reach it."
)
@click.option("--dtype", type=click.Choice(["float16", "bfloat16"]), help="GPU precision.")
@click.option("--wait", is_flag=True, help="Follow the logs until the job ends; exit as it did.")
@tenant_options
def submit(spec_path: str, address: str, output: str | None, workers: int | None,
           gpus_per_worker: float | None, paths_on_cluster: bool, s3_endpoint: str | None,
           dtype: str | None, wait: bool, tenants_file: str | None,
           tenant: str | None) -> None:  # fmt: skip
    """Run SPEC's driver on a Ray cluster through its Jobs API.

    Local LoRA and catalog files travel with the job; the model must be `tiny`, an
    s3:// folder or a hub id. Credentials stay on the cluster's nodes.
    """
    from farm.run import submit as remote
    from farm.spec import SpecError

    spec, policy = _load(spec_path, output, tenants_file, tenant)
    if policy is not None:
        # The caps are held by the job's driver; a submitted driver has no tenants file.
        raise SpecError(
            f"tenant: {policy.name}'s jobs run with `farm run --tenants FILE` "
            "on the cluster (e.g. in a RayJob), so its caps hold while it runs"
        )
    job = remote.submit(spec, address, workers=workers, gpus_per_worker=gpus_per_worker,
                        paths_on_cluster=paths_on_cluster, s3_endpoint=s3_endpoint,
                        dtype=dtype)  # fmt: skip
    from farm.redact import redact

    shown = redact(address)  # credentials in the address stay out of terminals and logs
    click.echo(f"submitted {job.submission_id} to {shown}")
    click.echo(f"  logs:   farm logs {job.submission_id} --address {shown} --follow")
    click.echo(f"  cancel: farm cancel {job.submission_id} --address {shown}")
    click.echo(f"  status: farm status {job.job_url}")
    if wait:
        _finish(remote.follow(address, job.submission_id, click.echo), job.submission_id)


@main.command()
@click.argument("submission_id")
@address_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs(submission_id: str, address: str, follow: bool) -> None:
    """Print the logs of a submitted job."""
    from farm.run import submit as remote

    status = remote.follow(address, submission_id, click.echo, wait=follow)
    if follow:
        _finish(status, submission_id)


@main.command()
@click.argument("submission_id")
@address_option
def cancel(submission_id: str, address: str) -> None:
    """Stop a submitted job. Finished units are kept; `farm resume` renders the rest."""
    from farm.run import submit as remote

    status = remote.cancel(address, submission_id)
    click.echo(f"{submission_id}: {status.lower()}")


def _finish(status: str, submission_id: str) -> None:
    click.echo(f"{submission_id}: {status.lower()}")
    if status != "SUCCEEDED":
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@max_items_option
@tenant_options
def plan(spec_path: str, as_json: bool, max_items: int | None, tenants_file: str | None,
         tenant: str | None) -> None:  # fmt: skip
    """Validate and expand SPEC without rendering: counts per axis, units, adapter groups."""
    from farm.plan.sweep import make_plan
    from farm.tenancy.policy import enforce_plan

    spec, policy = _load(spec_path, None, tenants_file, tenant)
    planned = make_plan(spec, max_items=max_items)
    enforce_plan(planned, policy)
    counts = planned.counts()
    if as_json:
        family = planned.model.family.name if planned.model else None
        click.echo(json.dumps({"job": spec.job, "output": spec.output, "family": family,
                               **counts}, indent=2))  # fmt: skip
        return
    click.echo(f"job {spec.job} → {spec.output}/{spec.job}"
               + (f" (tenant {spec.tenant})" if spec.tenant else ""))  # fmt: skip
    r = planned.spec.render  # with the family's defaults filled in
    family = planned.model.family.name if planned.model else "?"
    click.echo(f"  model          {spec.model} ({family}): {r.steps} steps, {r.scheduler}, "
               f"guidance {r.guidance:g}, {r.width}×{r.height}")  # fmt: skip
    lines = planned.spec.prompt_file
    if lines is not None:
        own = sum(1 for s in planned.sources
                  if s.settings or s.negative is not None or s.seed is not None)  # fmt: skip
        click.echo(f"  prompt file    {lines.path} ({lines.format}): {own} of "
                   f"{len(lines.lines)} lines set their own seed or settings")  # fmt: skip
    for lora in planned.spec.loras:
        if lora.checkpoints:  # a training run: its checkpoints in training order
            at = [c.step if c.step is not None else c.epoch for c in lora.checkpoints]
            span = (f", {'steps' if lora.checkpoints[0].step is not None else 'epochs'} "
                    f"{at[0]} to {at[-1]}" if None not in at else "")  # fmt: skip
            click.echo(f"  run {lora.name}: {len(lora.checkpoints)} checkpoints{span}, each "
                       "swept alone")  # fmt: skip
    for a in planned.adapters.values():
        if a.dropped:
            click.echo(f"  lora {a.name}: {a.applied} tensors apply, {a.dropped} dropped")
    for key in ("prompts", "seeds", "loras", "combos"):
        click.echo(f"  {key:<15}{counts[key]:>10}")
    if spec.presets:
        labels = sorted({p.preset for p in spec.presets})
        click.echo(f"  {'presets':<15}{len(labels):>10}  {', '.join(labels)}")
    click.echo(f"  {'items':<15}{counts['items']:>10}")
    click.echo(f"  {'units':<15}{counts['units']:>10}")
    click.echo(f"  {'adapter groups':<15}{counts['adapter_groups']:>10}")


@main.command()
@click.argument("job_url")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@s3_endpoint_option
@tenant_options
def status(job_url: str, as_json: bool, tenants_file: str | None, tenant: str | None) -> None:
    """Progress of the job at JOB_URL, read from the store alone."""
    from farm.audit.verify import job_status
    from farm.storage import open_store

    guard_job(job_url, tenants_file, tenant)
    info = job_status(open_store(job_url))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(
        f"job {info['job_id']}: {info['status']} · {info['rendered']}/{info['planned']} items "
        f"({info['percent']}%) · {info['parts']} parts · {info['runs']} runs"
    )
    if info["images_per_second"]:
        click.echo(f"rate: {info['images_per_second']} img/s")
    if info["failed_items"]:
        click.echo(f"failed items in the last run: {info['failed_items']}")


@main.command()
@click.argument("job_url")
@click.option("--no-images", is_flag=True, help="Check rows only, not image hashes.")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    metavar="N",
    help="Hash only N images drawn at random (every row is still checked).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**31 - 1),
    help="The seed of --sample's draw; the same seed draws the same images.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    metavar="N",
    help="Threads hashing images here (default: one per core).",
)
@click.option(
    "--address",
    metavar="HOST:PORT",
    help="Hash the images as tasks on this Ray cluster, next to the store.",
)
@s3_endpoint_option
@tenant_options
def verify(job_url: str, no_images: bool, sample: int | None, seed: int | None,
           workers: int | None, address: str | None, tenants_file: str | None,
           tenant: str | None) -> None:  # fmt: skip
    """Check that every planned item has exactly one row and an intact image."""
    from farm.audit.verify import verify_job
    from farm.run.progress import LazyProgress
    from farm.storage import open_store

    guard_job(job_url, tenants_file, tenant)
    if seed is not None and sample is None:
        raise click.UsageError("--seed: only with --sample N")
    if no_images and (sample is not None or workers or address):
        raise click.UsageError("--no-images: hashes no image; drop --sample, --workers "
                               "and --address")  # fmt: skip
    progress = LazyProgress(echo=click.echo)
    verdict = verify_job(open_store(job_url), check_images=not no_images, sample=sample,
                         seed=seed, workers=workers, address=address,
                         progress=progress)  # fmt: skip
    progress.finish()
    if verdict.sample_seed is not None:
        click.echo(f"sample: {verdict.images_checked} of {verdict.rows} images, seed "
                   f"{verdict.sample_seed} (`farm verify {job_url} --sample {sample} --seed "
                   f"{verdict.sample_seed}` checks the same ones)")  # fmt: skip
    if verdict.tasks:
        tasks = f"{verdict.tasks} task" + ("s" if verdict.tasks > 1 else "")
        click.echo(f"hashed in {tasks} on the Ray cluster at {address}")
    for problem in verdict.problems:
        click.echo(f"problem: {problem}")
    if not verdict.ok:
        sys.exit(EXIT_FAILED)
    click.echo(
        f"ok: {verdict.planned} planned items, {verdict.rows} rows, "
        f"{verdict.images_checked} images with matching sha256"
    )


@main.command()
@click.argument("job_url")
@click.argument("item_id")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the rerendered image here.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: a GPU if any.")
@s3_endpoint_option
@tenant_options
def rerender(job_url: str, item_id: str, out: Path | None, device: str | None,
             tenants_file: str | None, tenant: str | None) -> None:  # fmt: skip
    """Render ITEM_ID of the job at JOB_URL again and report whether the bytes match."""
    from farm.audit.rerender import rerender as run_again
    from farm.audit.rerender import write_out
    from farm.run.job import stored_policy
    from farm.storage import open_store
    from farm.tenancy.tenants import check_out_path

    config = guard_job(job_url, tenants_file, tenant)
    store = open_store(job_url)
    # What renders is held to the tenant's policy, whatever job.json says.
    doc, _, policy = stored_policy(store, config)
    if out is not None:
        if tenant is not None:
            check_out_path(out, config.tenant(tenant, "--tenant"))
        if not out.parent.absolute().is_dir():
            raise click.BadParameter(f"{out.parent} is not a folder", param_hint="'--out'")
    result = run_again(store, item_id, device, tenant=policy, doc=doc)
    if out:
        write_out(out, result.image)
        click.echo(f"image: {out}")
    if result.match:
        click.echo(f"match: {item_id} renders to the same bytes (sha256 {result.new_sha256})")
        return
    click.echo(
        f"differs: {item_id} stored sha256 {result.stored_sha256}, now {result.new_sha256} "
        f"(now {result.device} at batch {result.batch}; stored {result.original})"
    )
    sys.exit(EXIT_FAILED)


main.add_command(report_command)
main.add_command(presets_command)
main.add_command(model_command)
main.add_command(lora_command)
