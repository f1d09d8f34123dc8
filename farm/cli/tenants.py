"""`farm presets`, and how the job commands act for a tenant (--tenants, --tenant)."""

from __future__ import annotations

import json
import sys

import click

from farm.cli.options import s3_endpoint_option, tenant_options


def load_config(tenants_file: str | None):
    """The tenants file given by --tenants or FARM_TENANTS, validated; None without one."""
    from farm.tenancy.tenants import load_tenants, tenants_ref

    ref = tenants_ref(tenants_file)
    return load_tenants(ref) if ref else None


def guard_job(job_url: str, tenants_file: str | None, tenant: str | None):
    """Refuse a job URL outside the acting tenant's prefix, or a job of another tenant,
    before anything of it is read beyond job.json; the tenants config (or None)."""
    from farm.tenancy.tenants import check_job_tenant, check_job_url

    config = load_config(tenants_file)
    check_job_url(job_url, config, tenant)
    if tenant is not None:
        from farm.records.job_doc import read_job
        from farm.storage import open_store

        check_job_tenant(read_job(open_store(job_url)), job_url, tenant)
    return config


@click.group()
def presets() -> None:
    """Named strength presets: list, show, and suggest them from a measured sweep."""


@presets.command("list")
@tenant_options
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
@s3_endpoint_option
def presets_list(tenants_file: str | None, tenant: str | None, as_json: bool) -> None:
    """The presets of the tenants file: the global ones, or one tenant's as it sees them."""
    config = _require(tenants_file)
    groups = ({tenant: config.tenant(tenant, "--tenant").presets} if tenant else
              {"(global)": config.presets} |
              {t.name: {n: p for n, p in t.presets.items() if p.origin == t.name}
               for t in config.tenants.values()})  # fmt: skip
    if as_json:
        click.echo(json.dumps({g: [p.describe() for p in ps.values()] for g, ps in groups.items()},
                              indent=2))  # fmt: skip
        return
    for group, found in groups.items():
        click.echo(f"{group}:" + ("" if found else " no presets of its own"))
        for preset in found.values():
            click.echo(f"  {preset.name:<16}{_summary(preset)}")


@presets.command("show")
@click.argument("name")
@tenant_options
@click.option("--json", "as_json", is_flag=True, help="Print the preset as JSON.")
@s3_endpoint_option
def presets_show(name: str, tenants_file: str | None, tenant: str | None,
                 as_json: bool) -> None:  # fmt: skip
    """What preset NAME resolves to (for --tenant T: with T's overrides)."""
    config = _require(tenants_file)
    found = config.presets_of(tenant)
    if name not in found:
        from farm.spec.errors import SpecError, suggest

        whose = f"tenant {tenant}" if tenant else "the global presets"
        raise SpecError(f"preset {name!r}: not among {whose}{suggest(name, found)} "
                        f"(presets: {', '.join(sorted(found)) or 'none'})")  # fmt: skip
    preset = found[name]
    if as_json:
        click.echo(json.dumps(preset.describe(), indent=2))
        return
    click.echo(f"{preset.name} ({'global' if preset.origin == 'global' else preset.origin})")
    click.echo(f"  {_summary(preset)}")
    if preset.description:
        click.echo(f"  {preset.description}")


@presets.command("suggest")
@click.argument("job_url")
@click.option("--lora", help="Only this LoRA (its presets are then named subtle, standard, bold).")
@click.option("--json", "as_json", is_flag=True, help="Print the suggestion as JSON.")
@tenant_options
@s3_endpoint_option
def presets_suggest(job_url: str, lora: str | None, as_json: bool, tenants_file: str | None,
                    tenant: str | None) -> None:  # fmt: skip
    """A presets block from the measured response of the sweep at JOB_URL."""
    from farm.report.suggest import presets_yaml, suggest_presets
    from farm.storage import open_store

    guard_job(job_url, tenants_file, tenant)
    found = suggest_presets(open_store(job_url), lora)
    if as_json:
        click.echo(json.dumps([{"lora": s.lora, "curve": s.curve, "onset": s.onset,
                                "knee": s.knee, "break": s.break_at, "measured": s.measured,
                                "presets": s.weights, "why": s.why, "run": s.run,
                                "checkpoint_file": s.checkpoint_file, "step": s.step}
                               for s in found], indent=2))  # fmt: skip
        return
    sys.stdout.write(presets_yaml(found, job_url))


def _require(tenants_file: str | None):
    config = load_config(tenants_file)
    if config is None:
        from farm.spec.errors import SpecError

        raise SpecError("--tenants: no tenants file (give --tenants tenants.yaml or set "
                        "FARM_TENANTS)")  # fmt: skip
    return config


def _summary(preset) -> str:
    from farm.spec.strength import format_number as f

    d = preset.describe()
    target = f" on {preset.lora}" if preset.lora else ""
    if "slider" in d:
        s = d["slider"]
        return (f"slider{target} {f(s['min'])}..{f(s['max'])} step {f(s['step'])}, "
                f"default {f(s['default'])}")  # fmt: skip
    if "loras" in d:
        return ", ".join(f"{n} {_weight(w)}" for n, w in d["loras"].items())
    on = target or " on the job's LoRAs"
    return f"weight {_weight(d['weight'])}{on}"


def _weight(w: dict) -> str:
    from farm.spec.strength import format_number as f

    text = f(w["unet"]) if w["te"] == w["unet"] else f"te {f(w['te'])} unet {f(w['unet'])}"
    if w.get("blocks") is not None:
        text += f" blocks {w['blocks']}"
    if w.get("schedule") is not None:
        text += f" schedule {w['schedule']}"
    return text
