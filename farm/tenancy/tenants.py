"""tenants.yaml: the tenants of a shared farm, their presets, caps and output prefixes
(the presets themselves are in farm/tenancy/presets.py).

```yaml
presets:                        # global: every tenant has them unless it overrides one
  subtle: {weight: 0.4}         # the job's LoRA(s) at 0.4, text encoder and UNet
  bold: {weight: {te: 0.9, unet: 1.1}}
  style: {slider: {min: 0.2, max: 1.0, step: 0.1, default: 0.6}}
tenants:
  acme:
    output: s3://farm-renders/tenants/acme     # every job of acme's lands below this
    models: [tiny]                             # the first is the default
    loras: {house: loras/acme-house.safetensors, neon: "tiny:neon"}
    presets:
      bold: {weight: 0.9}                      # overrides the global bold
      poster: {loras: {house: 0.8, neon: {te: 0.2, unet: 0.4}}}
    caps: {strength: [0, 1.2], images: 50000, workers: 4, jobs: 2}
```

Relative LoRA paths are relative to the tenants file's folder; a relative local output
prefix, like a spec's output, to where farm runs. Validation gives the same one-line
errors as a spec, naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from farm.spec.errors import SpecError, show, suggest
from farm.spec.strength import Strength
from farm.tenancy.presets import Preset, parse_presets, preset_strengths

ENV = "FARM_TENANTS"  # where the tenants file is when --tenants is not given
ENV_TENANT = "FARM_TENANT"  # the tenant a command acts for when --tenant is not given
MAX_TENANTS_BYTES = 4 * 1024 * 1024
TOP_KEYS = ("presets", "tenants")
TENANT_KEYS = ("output", "models", "loras", "catalogs", "presets", "caps")
CAP_KEYS = ("strength", "images", "workers", "jobs")


@dataclass(frozen=True)
class Caps:
    strength: tuple[float, float] | None = None
    images: int | None = None
    workers: int | None = None
    jobs: int | None = None


@dataclass(frozen=True)
class Tenant:
    name: str
    output: str  # the prefix every job of the tenant lands below
    models: tuple[str, ...]
    loras: dict[str, str] = field(default_factory=dict)  # registry: name -> resolved path
    presets: dict[str, Preset] = field(default_factory=dict)  # global ones merged in
    caps: Caps = Caps()
    # Local folders the tenant's catalogs may be read from, beside a local prefix.
    catalogs: tuple[str, ...] = ()

    def catalog_roots(self) -> tuple[str, ...]:
        """Where a catalog of this tenant may lie: its own local prefix and `catalogs`."""
        own = () if self.output.startswith("s3://") else (self.output,)
        return own + self.catalogs

    def preset(self, name: object, where: str) -> Preset:
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"{where}: expected a preset name, got {show(name)}")
        if name not in self.presets:
            raise SpecError(f"{where}: unknown preset {name!r} for tenant {self.name}"
                            f"{suggest(name, self.presets)} (presets: "
                            f"{', '.join(sorted(self.presets)) or 'none'})")  # fmt: skip
        return self.presets[name]


@dataclass(frozen=True)
class Tenants:
    source: str
    presets: dict[str, Preset]  # the global ones
    tenants: dict[str, Tenant]

    def tenant(self, name: object, where: str = "tenant") -> Tenant:
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"{where}: expected a tenant name, got {show(name)}")
        if name not in self.tenants:
            known = ", ".join(sorted(self.tenants))
            raise SpecError(f"{where}: unknown tenant {name!r}{suggest(name, self.tenants)} "
                            f"(tenants in {self.source}: {known})")  # fmt: skip
        return self.tenants[name]

    def owner(self, url: str) -> Tenant | None:
        """The tenant whose output prefix holds `url`, if any."""
        # A local job of no tenant may climb with '..' (its store resolves it): compare
        # where it resolves to, so that no spelling of a tenant's prefix gets past.
        mine = _segments(url, strict=False)
        return next((t for t in self.tenants.values()
                     if mine[: len(theirs := _segments(t.output))] == theirs), None)  # fmt: skip

    def presets_of(self, tenant: str | None) -> dict[str, Preset]:
        return self.tenant(tenant, "--tenant").presets if tenant else self.presets


# ---------------------------------------------------------------- where a URL lies


def inside(url: str, prefix: str) -> bool:
    """Whether `url` is `prefix` or below it, segment by segment: s3://b/acme2 is not below
    s3://b/acme. A local URL is compared where its links lead. A URL with `..` (or an
    s3:// one with an empty segment, which the store would keep) is refused, never
    normalised away: what is compared is what the store writes."""
    mine, theirs = _segments(url), _segments(prefix)
    return mine[: len(theirs)] == theirs


def _segments(url: str, strict: bool = True) -> tuple[str, ...]:
    if url.startswith("s3://"):
        parts = url[len("s3://") :].rstrip("/").split("/")
        if any(p in (".", "..") for p in parts):
            raise SpecError(f"{url}: '.' and '..' are not allowed in an s3:// URL")
        if "" in parts:
            raise SpecError(f"{url}: an empty segment ('//') is not allowed in an s3:// URL")
        return ("s3", *parts)
    path = _local(url) if strict else Path(url).expanduser()
    return ("file", *path.resolve().parts)


def _local(url: str) -> Path:
    path = Path(url).expanduser()
    if ".." in path.parts:
        raise SpecError(f"{url}: '..' is not allowed in a path a tenant's prefix is checked "
                        "against; write the path without it")  # fmt: skip
    return path


def links_out(url: str, prefix: str) -> bool:
    """Whether a local `url` lies inside `prefix` as written but leaves it through a link."""
    if url.startswith("s3://") or prefix.startswith("s3://"):
        return False
    written = _local(url).absolute().parts
    base = (Path(prefix).expanduser().absolute().parts, _local(prefix).resolve().parts)
    return any(written[: len(b)] == b for b in base) and not inside(url, prefix)


def check_job_url(url: str, tenants: Tenants | None, tenant: str | None) -> None:
    """A command on a job URL acting for `tenant` reaches only that tenant's prefix."""
    if tenant is None:
        return
    if tenants is None:
        raise SpecError(f"--tenant {tenant}: no tenants file (give --tenants or set {ENV})")
    mine = tenants.tenant(tenant, "--tenant")
    if not inside(url, mine.output):
        how = "links out of" if links_out(url, mine.output) else "outside"
        raise SpecError(f"{url}: {how} tenant {tenant}'s output prefix {mine.output}; a "
                        "tenant reaches only its own jobs")  # fmt: skip


def check_catalog(text: str, base: Path, tenant: Tenant, where: str = "catalog.path") -> None:
    """A tenant's catalog lies in its own local prefix or a folder of its `catalogs`,
    compared where links lead. Nothing is read, so the answer for a path outside is the
    same whether a file is there or not."""
    if "://" in text:
        return  # a URL: the spec's own validation refuses it for every job
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    roots = tenant.catalog_roots()
    if ".." not in path.parts:
        real = path.resolve()
        if any(real.is_relative_to(Path(r).expanduser().resolve()) for r in roots):
            return
    folders = ", ".join(roots) if roots else "none; the tenants file's catalogs lists them"
    raise SpecError(f"{where}: {text} is outside tenant {tenant.name}'s catalog folders "
                    f"({folders}); put the catalog in one of them")  # fmt: skip


def check_out_path(path: Path | str, tenant: Tenant, where: str = "--out") -> None:
    """A file written for a tenant outside its jobs (`rerender --out`) lies in its prefix,
    where links lead; an s3:// prefix has no local files, so none is."""
    url = str(path)
    try:
        ok = not tenant.output.startswith("s3://") and inside(url, tenant.output)
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    if not ok:
        raise SpecError(f"{where}: {url} is outside tenant {tenant.name}'s prefix "
                        f"{tenant.output}; write the file below it")  # fmt: skip


def check_job_tenant(doc: dict, url: str, tenant: str | None) -> None:
    """The job at `url` belongs to `tenant` (job.json says whose it is)."""
    owner = doc.get("spec", {}).get("tenant") if isinstance(doc.get("spec"), dict) else None
    if tenant is not None and owner != tenant:
        raise SpecError(f"{url}: not a job of tenant {tenant}; a tenant reaches only its own jobs")


# ---------------------------------------------------------------- reading the file


def tenants_ref(option: str | None) -> str | None:
    """The tenants file to use: --tenants, else FARM_TENANTS, else none."""
    if option is not None:
        if not option.strip():
            raise SpecError("--tenants: is empty; give a tenants.yaml path or s3:// URL")
        return option
    return os.environ.get(ENV) or None


def load_tenants(ref: str) -> Tenants:
    """Read and validate a tenants file, local or s3://; SpecError naming the field."""
    from farm.spec.yaml_rules import load_yaml  # the spec's YAML rules: 1.2 numbers, no repeats

    if ref.startswith("s3://"):
        from farm.storage.fetch import fetch_file
        from farm.storage.store import StoreError

        try:
            path = fetch_file(ref)
        except StoreError as err:
            raise SpecError(f"tenants: {err}") from None
        base: str = ref.rsplit("/", 1)[0]
    else:
        path = Path(ref).expanduser()
        base = str(path.absolute().parent)
    name = Path(ref).name if not ref.startswith("s3://") else ref
    try:
        if path.stat().st_size > MAX_TENANTS_BYTES:
            raise SpecError(f"{name}: larger than {MAX_TENANTS_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError(f"--tenants: {ref}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"--tenants: {ref}: is a folder, not a tenants.yaml") from None
    except UnicodeDecodeError:
        raise SpecError(f"{name}: not UTF-8 text") from None
    return parse_tenants(load_yaml(text, name), source=name, base=base)


def parse_tenants(data: Any, *, source: str, base: str) -> Tenants:
    from farm.spec.fields import NAME_RE, as_mapping, check_keys

    def err(at: str, what: str) -> SpecError:
        return SpecError(f"{source}: {at}: {what}")

    if not isinstance(data, dict):
        raise SpecError(f"{source}: the top level must be a mapping (presets, tenants)")
    try:
        check_keys(data, TOP_KEYS, "")
        global_presets = parse_presets(data.get("presets") or {}, "presets", "global")
        raw = as_mapping(data.get("tenants"), "tenants", "a mapping {tenant name: settings}")
        if not raw:
            raise SpecError("tenants: is empty (define at least one tenant)")
        tenants: dict[str, Tenant] = {}
        for tname, settings in raw.items():
            at = f"tenants.{tname}"
            if not isinstance(tname, str) or not NAME_RE.fullmatch(tname):
                raise SpecError(f"{at}: a tenant name uses letters, digits, '_', '.', '-'")
            tenants[tname] = _tenant(tname, as_mapping(settings, at), at, base, global_presets)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    prefixes = sorted(tenants.values(), key=lambda t: len(_segments(t.output)))
    for i, a in enumerate(prefixes):
        for b in prefixes[i + 1 :]:
            if inside(b.output, a.output):
                raise err(f"tenants.{b.name}.output", f"{b.output} is inside tenant "
                          f"{a.name}'s prefix {a.output}; give each tenant its own")  # fmt: skip
    return Tenants(source, global_presets, tenants)


def _tenant(name: str, m: dict, at: str, base: str, global_presets: dict) -> Tenant:
    from farm.spec.fields import NAME_RE, as_mapping, as_str, check_keys
    from farm.spec.lora_axes import lora_path
    from farm.spec.parse import model_field, output_field

    check_keys(m, TENANT_KEYS, at)
    if m.get("output") is None:
        raise SpecError(f"{at}.output: required (the prefix every job of {name} lands below)")
    # A local prefix is relative to where farm runs, as a spec's output is.
    output = output_field(m["output"], f"{at}.output").rstrip("/") or "/"
    try:
        _segments(output)  # no '..', no empty s3:// segment: a prefix is what the store writes
    except SpecError as err:
        raise SpecError(f"{at}.output: {err}") from None
    models_raw = m.get("models", ["tiny"])
    if isinstance(models_raw, str):
        models_raw = [models_raw]
    if not isinstance(models_raw, list) or not models_raw:
        raise SpecError(f"{at}.models: expected a list of models (the first is the default)")
    local_base = Path(base) if not base.startswith("s3://") else Path.cwd()
    models = tuple(model_field(as_str(v, f"{at}.models[{i}]"), local_base)
                   for i, v in enumerate(models_raw))  # fmt: skip
    loras: dict[str, str] = {}
    for lname, ref in as_mapping(m.get("loras") or {}, f"{at}.loras").items():
        where = f"{at}.loras.{lname}"
        if not isinstance(lname, str) or not NAME_RE.fullmatch(lname):
            raise SpecError(f"{where}: a LoRA name uses letters, digits, '_', '.', '-'")
        text = as_str(ref, where)
        if base.startswith("s3://") and not (text.startswith(("s3://", "tiny:", "/"))):
            text = f"{base}/{text}"  # relative to an s3:// tenants file: beside it
        loras[lname] = lora_path(text, where, local_base)
    folders = _list(m.get("catalogs") or [], f"{at}.catalogs")
    catalogs = tuple(_catalog_folder(v, f"{at}.catalogs[{i}]", local_base)
                     for i, v in enumerate(folders))  # fmt: skip
    own = parse_presets(m.get("presets") or {}, f"{at}.presets", name)
    presets = {**global_presets, **own}
    caps = _caps(as_mapping(m.get("caps") or {}, f"{at}.caps"), f"{at}.caps")
    # A tenant's own presets must fit it; a global one that names a LoRA the tenant lacks
    # or goes past its cap is refused only where a job of the tenant picks it.
    for pname, preset in own.items():
        named = [n for n, _ in preset.loras] + ([preset.lora] if preset.lora else [])
        for lname in named:
            if lname not in loras:
                raise SpecError(f"{at}.presets.{pname}: LoRA {lname!r} is not in {at}.loras"
                                f"{suggest(lname, loras)}")  # fmt: skip
        for lname, w in preset_strengths(preset):
            check_strength(w, caps, f"{at}.presets.{pname}" + (f".{lname}" if lname else ""))
    return Tenant(name, output, models, loras, presets, caps, catalogs)


def _list(value: Any, at: str) -> list:
    if not isinstance(value, list):
        raise SpecError(f"{at}: expected a list of folders, got {show(value)}")
    return value


def _catalog_folder(value: Any, at: str, base: Path) -> str:
    """A folder a tenant's catalogs may lie in: local, relative to the tenants file."""
    from farm.spec.fields import as_str

    text = as_str(value, at)
    if "://" in text:
        raise SpecError(f"{at}: {text} — catalogs are local files; give a local folder")
    path = Path(text).expanduser()
    if ".." in path.parts:
        raise SpecError(f"{at}: {text}: write the folder without '..'")
    folder = path if path.is_absolute() else base / path
    return str(folder.absolute())


def _caps(m: dict, at: str) -> Caps:
    from farm.spec.fields import as_int, as_number, check_keys

    check_keys(m, CAP_KEYS, at)
    strength = m.get("strength")
    if strength is not None:
        if not isinstance(strength, list) or len(strength) != 2:
            raise SpecError(f"{at}.strength: expected [lowest, highest], e.g. [0, 1.2]")
        lo, hi = (as_number(v, f"{at}.strength[{i}]", strings=True) for i, v in enumerate(strength))
        if lo > hi:
            raise SpecError(f"{at}.strength: {lo:g} is above {hi:g}")
        strength = (lo, hi)

    def count(key: str) -> int | None:
        v = m.get(key)
        return None if v is None else as_int(v, f"{at}.{key}", 1, 10**12)

    return Caps(strength, count("images"), count("workers"), count("jobs"))


# ---------------------------------------------------------------- caps


def check_strength(w: Strength, caps: Caps, where: str) -> None:
    """A strength inside the caps at every layer and step: each weight, and each product
    of factors the render multiplies (weight × block × schedule), as Strength.scales."""
    if caps.strength is None:
        return
    lo, hi = caps.strength
    for value, factors in w.scales():
        if not lo - 1e-9 <= value <= hi + 1e-9:
            how = "" if factors.count(" ") == 1 else f" ({factors})"
            raise SpecError(f"{where}: strength {value:.12g}{how} is outside the tenant's cap "
                            f"{lo:.12g}..{hi:.12g}")  # fmt: skip


def check_strengths(pairs: Iterable[tuple[str, Strength]], caps: Caps, where: str) -> None:
    for name, w in pairs:
        check_strength(w, caps, f"{where}.{name}" if name else where)


def local_path(text: str) -> bool:
    """Whether a LoRA reference is a path rather than a registry name."""
    return ("/" in text or "\\" in text or text.startswith(("~", ".")) or
            PurePosixPath(text).suffix.lower() == ".safetensors")  # fmt: skip
