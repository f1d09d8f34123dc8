"""A spec against tenants.yaml: preset names resolved into weights, a tenant's LoRAs taken
from its registry, and its policy enforced before anything is written.

`resolve` runs before validation (it rewrites the spec mapping), `enforce` after it (and
after --output), `enforce_plan` once the plan's size and prompt tags are known. Every
refusal is a SpecError: one line, exit 2, nothing written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from farm.spec.errors import SpecError, show, suggest
from farm.spec.model import Spec
from farm.spec.strength import Strength
from farm.tenancy.presets import Preset
from farm.tenancy.tenants import (
    Tenant,
    Tenants,
    check_catalog,
    check_strength,
    check_strengths,
    inside,
    links_out,
    local_path,
)


def uses_tenants(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    catalog = data.get("catalog")
    by_row = isinstance(catalog, dict) and catalog.get("preset_by") is not None
    return any(data.get(k) is not None for k in ("tenant", "preset", "presets")) or by_row


def resolver(tenants: Tenants | None, acting: str | None = None):
    """What `load_spec` calls to resolve a spec against the tenants file (`acting`: the
    tenant running it); None when there is neither a tenants file nor a tenant."""
    if tenants is None and acting is None:
        return None
    return lambda data, base: resolve(data, tenants, acting, base)


def resolve(
    data: Any, tenants: Tenants | None, acting: str | None = None, base: Path | None = None
) -> Any:
    """The spec mapping with its tenant's defaults and registry paths filled in and its
    preset names turned into `preset_weights`; unchanged for a spec that uses neither.
    `base` is the spec's folder, which its relative paths start from."""
    if not isinstance(data, dict):
        return data
    name = data.get("tenant")
    if acting is not None:
        if name is not None and name != acting:
            raise SpecError(f"tenant: the spec is for tenant {show(name)} and --tenant is "
                            f"{acting!r}; a tenant runs only its own jobs")  # fmt: skip
        name = acting
    if name is None and not uses_tenants(data):
        return data
    if tenants is None:
        if acting is not None:
            field = f"--tenant {acting}"
        else:
            field = next((k for k in ("tenant", "preset", "presets")
                          if data.get(k) is not None), "catalog.preset_by")  # fmt: skip
        raise SpecError(f"{field}: needs a tenants file (give --tenants tenants.yaml or set "
                        "FARM_TENANTS)")  # fmt: skip
    tenant = tenants.tenant(name) if name is not None else None
    out = dict(data)
    if tenant is not None:
        out["tenant"] = tenant.name
        if out.get("model") is None:
            out["model"] = tenant.models[0]
        if out.get("output") is None:
            out["output"] = tenant.output
        check_stored_paths(out, tenant, base or Path.cwd())
        out["loras"] = _registry_loras(out.get("loras") or [], tenant)
    presets = tenant.presets if tenant is not None else tenants.presets
    entries = _preset_entries(out)
    catalog = out.get("catalog")
    by = catalog.get("preset_by") if isinstance(catalog, dict) else None
    if by is not None and entries:
        raise SpecError("preset: catalog.preset_by picks each row's preset; remove preset/presets")
    if isinstance(by, dict) and isinstance(by.get("map"), dict):
        wanted = [(f"catalog.preset_by.map.{k}", v) for k, v in by["map"].items()]
        if by.get("default") is not None:
            wanted.append(("catalog.preset_by.default", by["default"]))
        seen: set = set()
        entries = []
        for where, label in wanted:
            if isinstance(label, str) and label not in seen:
                seen.add(label)
                entries.append((label, None, where))
    if not entries:
        return out
    resolved = [_lookup(presets, label, where, tenant).resolved(at, where)
                for label, at, where in entries]  # fmt: skip
    if tenant is not None:
        _add_preset_loras(out, resolved, tenant)
    out["preset_weights"] = resolved
    return out


def _preset_entries(out: dict) -> list[tuple[str, float | None, str]]:
    """(name, slider position, field) for `preset:` or each of `presets:`; both removed."""
    one, many = out.pop("preset", None), out.pop("presets", None)
    if one is not None and many is not None:
        raise SpecError("presets: give preset (one) or presets (an axis), not both")
    if one is not None:
        return _entry(one, "preset")
    if many is None:
        return []
    if not isinstance(many, list) or not many:
        raise SpecError("presets: expected a non-empty list of preset names")
    entries = [e for i, v in enumerate(many) for e in _entry(v, f"presets[{i}]")]
    labels = [(label, at) for label, at, _ in entries]
    for i, key in enumerate(labels):
        if key in labels[:i]:
            raise SpecError(f"{entries[i][2]}: preset {key[0]!r} is listed twice")
    return entries


def _entry(value: Any, where: str) -> list[tuple[str, float | None, str]]:
    from farm.spec.fields import as_number, check_keys
    from farm.spec.lora_axes import parse_strengths

    if isinstance(value, str):
        if not value.strip():
            raise SpecError(f"{where}: is empty (give a preset name)")
        return [(value, None, where)]
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a preset name or {{name, at}}, got {show(value)}")
    check_keys(value, ("name", "at"), where)
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"{where}.name: required (the slider preset's name)")
    at = value.get("at")
    if at is None:
        return [(name, None, where)]
    if isinstance(at, list) or (isinstance(at, str) and ":" in at):
        return [(name, v, where) for v in parse_strengths(at, f"{where}.at")]
    return [(name, as_number(at, f"{where}.at", strings=True), where)]


def _lookup(presets: dict[str, Preset], label: str, where: str, tenant: Tenant | None) -> Preset:
    if label not in presets:
        whose = f" for tenant {tenant.name}" if tenant is not None else ""
        raise SpecError(f"{where}: unknown preset {label!r}{whose}{suggest(label, presets)} "
                        f"(presets: {', '.join(sorted(presets)) or 'none'})")  # fmt: skip
    return presets[label]


def _registry_loras(value: Any, tenant: Tenant) -> list:
    """A tenant job's `loras`: each names a registry entry, never a file path."""
    if not isinstance(value, list):
        return value  # the spec's own validation says what is wrong
    known = ", ".join(sorted(tenant.loras)) or "none"
    out = []
    for i, item in enumerate(value):
        at = f"loras[{i}]"
        entry = {"name": item} if isinstance(item, str) else item
        if not isinstance(entry, dict):
            out.append(entry)
            continue
        entry = dict(entry)
        if "checkpoints" in entry:  # files on the machine that plans, not the registry's
            raise SpecError(f"{at}.checkpoints: a job of tenant {tenant.name} names its LoRAs "
                            f"from the registry ({known}), not a training run's files")  # fmt: skip
        ref = entry.get("path", entry.get("name"))
        field = f"{at}.path" if "path" in entry else f"{at}.name"
        if not isinstance(ref, str) or not ref.strip():
            raise SpecError(f"{field}: expected a LoRA name from tenant {tenant.name}'s "
                            f"registry ({known})")  # fmt: skip
        if ref.startswith("/") or ".." in ref.replace("\\", "/").split("/") or \
                ref.startswith("~"):  # fmt: skip
            raise SpecError(f"{field}: {ref!r} is a file path; a job of tenant {tenant.name} "
                            f"names its LoRAs from the registry ({known})")  # fmt: skip
        if ref not in tenant.loras:
            what = "is a file path" if local_path(ref) or ":" in ref else "is not a LoRA"
            raise SpecError(f"{field}: {ref!r} {what} of tenant {tenant.name}"
                            f"{suggest(ref, tenant.loras)} (registry: {known})")  # fmt: skip
        entry.setdefault("name", ref)
        entry["path"] = tenant.loras[ref]
        out.append(entry)
    return out


def _add_preset_loras(out: dict, resolved: list[dict], tenant: Tenant) -> None:
    """LoRAs a preset names that the spec does not list join `loras`, unswept."""
    listed = {e.get("name") for e in out["loras"] if isinstance(e, dict)}
    catalog = out.get("catalog")
    by = catalog.get("lora_by") if isinstance(catalog, dict) else None
    names = [(f"preset {r['preset']!r}", n) for r in resolved for n in (r.get("loras") or {})]
    names += [(f"preset {r['preset']!r}", r["lora"]) for r in resolved if r.get("lora")]
    if isinstance(by, dict) and isinstance(by.get("map"), dict):
        names += [("catalog.lora_by", v) for v in by["map"].values() if isinstance(v, str)]
        if isinstance(by.get("default"), str):
            names.append(("catalog.lora_by.default", by["default"]))
    for where, name in names:
        if name in listed:
            continue
        if name not in tenant.loras:
            raise SpecError(f"{where}: LoRA {name!r} is not a LoRA of tenant {tenant.name}"
                            f"{suggest(name, tenant.loras)}")  # fmt: skip
        out["loras"].append({"name": name, "path": tenant.loras[name]})
        listed.add(name)


# ---------------------------------------------------------------- enforcement


def check_stored_paths(data: dict, tenant: Tenant, base: Path) -> None:
    """The paths of a spec mapping (a spec file's, or job.json's) that are read before
    validation checks anything: a tenant's job names no LoRA folder, and its catalog
    lies in the tenant's own folders, and it reads no prompt file. Run before the catalog
    or a prompt file is opened, so a refusal says nothing of what exists elsewhere."""
    prompts = data.get("prompts")
    if isinstance(prompts, dict) and prompts.get("file") is not None:
        # A file on the machine that plans: for a shared farm's driver, anyone's file.
        raise SpecError(f"prompts.file: a job of tenant {tenant.name} lists its prompts in "
                        "the spec (prompts: [...]) or in a catalog of the tenant's own, not "
                        "in a file on the machine that plans")  # fmt: skip
    catalog = data.get("catalog")
    path = catalog.get("path") if isinstance(catalog, dict) else None
    _check_paths(data.get("lora_dir"), path if isinstance(path, str) else None, tenant, base)


def _check_paths(lora_dir: object, catalog: str | None, tenant: Tenant, base: Path) -> None:
    if lora_dir is not None:
        raise SpecError(f"lora_dir: a job of tenant {tenant.name} names its LoRAs from "
                        "the tenant's registry, not a folder")  # fmt: skip
    if catalog is not None:
        check_catalog(catalog, base, tenant)


def check_stored(doc: dict, tenants: Tenants | None) -> None:
    """job.json's spec, before it is parsed: a tenant's job reads only the tenant's
    files. A tenant can rewrite its own job.json, so nothing in it is trusted."""
    spec = doc.get("spec")
    if tenants is None or not isinstance(spec, dict) or spec.get("tenant") is None:
        return
    check_stored_paths(spec, tenants.tenant(spec["tenant"]), Path.cwd())


def enforce(spec: Spec, tenants: Tenants | None) -> Tenant | None:
    """The spec's tenant, with its output, model and LoRAs checked; for a job of no
    tenant, that its output is in no tenant's prefix."""
    if tenants is None:
        if spec.tenant is not None:
            raise SpecError(f"tenant: {spec.tenant}: needs a tenants file (give --tenants "
                            "tenants.yaml or set FARM_TENANTS)")  # fmt: skip
        return None
    job_url = f"{spec.output.rstrip('/')}/{spec.job}"
    if spec.tenant is None:
        owner = tenants.owner(job_url)
        if owner is not None:
            raise SpecError(f"output: {spec.output} is inside tenant {owner.name}'s prefix "
                            f"{owner.output}; run it as that tenant's job (tenant: "
                            f"{owner.name})")  # fmt: skip
        return None
    tenant = tenants.tenant(spec.tenant)
    try:
        ok = inside(job_url, tenant.output)
    except SpecError as err:
        raise SpecError(f"output: {err}") from None
    if not ok:
        if links_out(job_url, tenant.output):
            raise SpecError(f"output: {job_url} is a link that leads out of tenant "
                            f"{tenant.name}'s prefix {tenant.output}; remove the link")  # fmt: skip
        raise SpecError(f"output: {spec.output} is outside tenant {tenant.name}'s prefix "
                        f"{tenant.output}; leave output out or write below the prefix")  # fmt: skip
    if spec.model not in tenant.models:
        raise SpecError(f"model: {spec.model} is not allowed for tenant {tenant.name} "
                        f"(allowed: {', '.join(tenant.models)})")  # fmt: skip
    # A checkpoint's config or base folder gives weights and tokenizers too: it must be
    # one of the tenant's models as well.
    if spec.model_folder is not None and spec.model_folder not in tenant.models:
        raise SpecError(f"model.{spec.model_folder_key}: {spec.model_folder} is not allowed "
                        f"for tenant {tenant.name} (allowed: "
                        f"{', '.join(tenant.models)})")  # fmt: skip
    _check_paths(spec.lora_dir, spec.catalog.path if spec.catalog else None, tenant, Path.cwd())
    if spec.prompt_file is not None and spec.prompt_file.path:
        check_stored_paths({"prompts": {"file": spec.prompt_file.path}}, tenant, Path.cwd())
    registry = set(tenant.loras.values())
    for i, lora in enumerate(spec.loras):
        if lora.path not in registry:
            raise SpecError(f"loras[{i}]: {lora.name} is not a LoRA of tenant {tenant.name}")
        for w in lora.strengths():
            check_strength(w, tenant.caps, f"loras[{i}].alpha")
    if not isinstance(spec.combine, str):
        for i, combo in enumerate(spec.combine):
            check_strengths(combo, tenant.caps, f"combine[{i}]")
    names = tuple(x.name for x in spec.loras)
    for preset in spec.presets:
        check_strengths(preset.bind(names) if preset.loras or preset.lora or names
                        else [("", preset.weight)], tenant.caps,
                        f"preset {preset.preset!r}")  # fmt: skip
    return tenant


def enforce_plan(plan, tenant: Tenant | None, workers: int | None = None) -> None:
    """The plan's size and prompt tags inside the tenant's caps, and --workers too."""
    if tenant is None:
        return
    caps = tenant.caps
    if caps.images is not None and plan.items > caps.images:
        raise SpecError(f"the job has {plan.items:,} images, more than tenant {tenant.name}'s "
                        f"quota of {caps.images:,} a job; shrink an axis")  # fmt: skip
    if caps.workers is not None and workers is not None and workers > caps.workers:
        raise SpecError(f"--workers {workers}: tenant {tenant.name} may use at most "
                        f"{caps.workers} workers")  # fmt: skip
    paths = set(tenant.loras.values())
    registry = ", ".join(sorted(tenant.loras))
    for name, adapter in plan.adapters.items():
        if adapter.path not in paths:
            raise SpecError(f"<lora:{name}:…>: not a LoRA of tenant {tenant.name} "
                            f"(registry: {registry})")  # fmt: skip
    seen: set[tuple[str, Strength]] = set()
    for where, name, w in plan_strengths(plan):
        if (name, w) not in seen:
            seen.add((name, w))
            check_strength(w, caps, where)


def plan_strengths(plan) -> Iterator[tuple[str, str, Strength]]:
    """(where, LoRA, strength) for every strength the plan's items render with: the
    swept axes, combinations and presets, and every prompt's or catalog row's tags."""
    combos, spec = plan.combos, plan.spec
    index = {x.name: i for i, x in enumerate(spec.loras)}
    if combos.explicit is not None:
        for i, combo in enumerate(combos.explicit):
            label = combos.labels[i] if combos.labels else None
            where = f"preset {label!r}" if label else f"combine[{i}]"
            for name, w in combo:
                yield f"{where}.{name}", name, w
    else:
        for axis in combos.axes:
            for name, w in axis:
                yield f"loras[{index.get(name, '?')}]", name, w
    for source in plan.sources:
        for name, w in source.tags:
            yield f"<lora:{name}:…> in {source.prompt[:40]!r}", name, w
