"""`farm report`, and the `--report` of `farm run` and `farm resume`."""

from __future__ import annotations

import click

from farm.cli.options import s3_endpoint_option, tenant_options
from farm.limits import SHEET_MAX_PIXELS


def report_options(command):
    """--max-pixels and --cell-px: how big a contact sheet's page and cells may be."""
    command = click.option(
        "--cell-px", type=click.IntRange(32, 1024), default=256, show_default=True,
        help="Each image's long side on the sheets and animations.",
    )(command)  # fmt: skip
    return click.option(
        "--max-pixels", type=click.IntRange(min=1), default=SHEET_MAX_PIXELS,
        show_default=True, metavar="N",
        help="A contact sheet page's cap in pixels; bigger grids are paged.",
    )(command)  # fmt: skip


def write_report(job_url: str, *, max_pixels: int, cell_px: int, workers: int | None = None,
                 address: str | None = None) -> None:  # fmt: skip
    """Build the report of the job at JOB_URL and print where it is and what it found."""
    from farm.report.build import INDEX, build_report
    from farm.run.progress import LazyProgress
    from farm.storage import open_store

    progress = LazyProgress(echo=lambda line: click.echo(line, err=True),
                            stream=click.get_text_stream("stderr"))  # fmt: skip
    report = build_report(open_store(job_url), max_pixels=max_pixels, cell_px=cell_px,
                          echo=lambda line: click.echo(line, err=True), workers=workers,
                          address=address, progress=progress)  # fmt: skip
    progress.finish()
    kept = report.series - report.measured
    if address and report.measured:
        click.echo(f"series:   {report.measured} measured as tasks on the Ray cluster at "
                   f"{address}")  # fmt: skip
    if kept:
        click.echo(f"series:   {report.measured} measured, {kept} kept from an earlier report "
                   "(their images are unchanged)")  # fmt: skip
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(summary_table(report))
    for run in report.runs:
        click.echo("")
        click.echo(run_table(run))
        click.echo(f"recommended: {run.sentence()}")
    if report.collapsed:
        click.echo(
            f"collapsed: {report.collapsed} images past full strength have lost the "
            "full-strength picture (framed on the sheets, flagged in the gallery)"
        )
    click.echo(f"report:   {job_url}/{INDEX}")
    click.echo(f"          {report.sheets} contact sheets, {report.animations} "
               f"animations, curves.png, response.parquet")  # fmt: skip


def summary_table(report) -> str:
    """The response summary as an aligned text table, one line per swept LoRA."""
    from farm.spec.strength import format_number

    def num(x: float | None) -> str:
        return "-" if x is None else format_number(round(x, 2))

    head = ["curve", "series", "onset", "knee", "break", "recommended", "why it breaks"]
    lines = [head]
    for s in report.summaries:
        series = str(s.points[0].series if s.points else 0)
        rec = f"{num(s.recommended[0])} to {num(s.recommended[1])}" if s.recommended else "-"
        why = s.break_reason or ("; ".join(s.notes) if s.notes else "no break up to "
                                 f"{num(s.points[-1].strength) if s.points else '-'}")  # fmt: skip
        lines.append([s.curve, series, num(s.onset), num(s.knee), num(s.break_at), rec, why])
    if not report.summaries:
        return (f"{report.rendered} of {report.planned} images; no LoRA strength is swept, "
                "so there is no response to measure")  # fmt: skip
    widths = [max(len(r[i]) for r in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
                     for r in lines)  # fmt: skip


def run_table(run) -> str:
    """A training run's checkpoints side by side, in training order."""
    from farm.spec.strength import format_number

    def num(x: float | None, digits: int = 2) -> str:
        return "-" if x is None or x != x else format_number(round(x, digits))

    head = ["checkpoint", "step", "effect at 1", "likeness", "spread", "onset", "knee", "break",
            "recommended", "verdict"]  # fmt: skip
    lines = [head]
    for c in run.candidates:
        s = c.summary
        rec = f"{num(s.recommended[0])} to {num(s.recommended[1])}" if s.recommended else "-"
        place = c.place.step if c.place.step is not None else c.place.epoch
        verdict = "recommended" if c is run.chosen else (c.why_not or "eligible")
        lines.append([c.file, "-" if place is None else str(place), num(c.effect, 3),
                      "-" if c.likeness != c.likeness else f"{c.likeness:.0%}", num(c.spread),
                      num(s.onset), num(s.knee), num(s.break_at), rec, verdict])  # fmt: skip
    widths = [max(len(r[i]) for r in lines) for i in range(len(head) - 1)]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  "
                      + r[-1] for r in lines)  # fmt: skip
    return f"training run {run.title}:\n{table}"


@click.command()
@click.argument("job_url")
@report_options
@click.option("--serve", is_flag=True, help="Then serve the report on 127.0.0.1 until Ctrl-C.")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port for --serve (default: any free one).")  # fmt: skip
@click.option("--workers", type=click.IntRange(1, 1024), metavar="N",
              help="Processes measuring series here (default: one per core).")  # fmt: skip
@click.option(
    "--address",
    metavar="HOST:PORT",
    help="Measure the series as tasks on this Ray cluster, next to the store.",
)
@s3_endpoint_option
@tenant_options
def report(job_url: str, max_pixels: int, cell_px: int, serve: bool, port: int,
           workers: int | None, address: str | None, tenants_file: str | None,
           tenant: str | None) -> None:  # fmt: skip
    """Contact sheets, strength animations, response curves and a gallery under JOB_URL/report/."""
    from farm.cli.tenants import guard_job

    guard_job(job_url, tenants_file, tenant)
    # The port first: a flag this machine cannot satisfy is refused before anything is written.
    server = listen(job_url, port) if serve else None
    try:
        write_report(job_url, max_pixels=max_pixels, cell_px=cell_px, workers=workers,
                     address=address)  # fmt: skip
    except BaseException:
        if server is not None:
            server.shutdown()
        raise
    if server is not None:
        serve_report(server)


def listen(job_url: str, port: int):
    """A ReportServer bound to 127.0.0.1:`port` (0: any free one), not yet serving."""
    from farm.report.build import ReportError
    from farm.report.serve import ReportServer
    from farm.storage import open_store

    try:
        return ReportServer(open_store(job_url), port=port)
    except OSError as err:  # bad input, exit 2
        raise ReportError(
            f"--port {port}: cannot listen on 127.0.0.1 ({err.strerror}); pick another port or 0"
        ) from None


def serve_report(server) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    import signal

    # Ctrl-C stops it even where it was started with SIGINT ignored (a background job of
    # a script inherits that), and SIGTERM stops it the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    click.echo(f"serving {server.url} (read-only, 127.0.0.1 only); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    click.echo("stopped")
