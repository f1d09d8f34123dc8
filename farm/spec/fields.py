"""The small pieces every part of a spec's validation shares: reading a field of a
mapping with one-line errors that name it, and a combine entry's strength.

parse, lora_axes, catalog_block, preset_weights and the tenants file build on these;
they import nothing of the spec's own above the data model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from farm.spec.errors import SpecError, show, suggest
from farm.spec.strength import Blocks, Strength, StrengthError, parse_blocks, parse_schedule

NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# The largest seed a spec or a prompt file gives: an unsigned 32-bit number.
MAX_SEED = 2**32 - 1
URL_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
STRENGTH_KEYS = ("weight", "te", "unet", "blocks", "schedule")
_NO_TENANTS = (
    "presets are defined in a tenants file: give --tenants tenants.yaml or set FARM_TENANTS"
)
# Keys that farm/tenancy/policy.py resolves into preset_weights before validation: seen
# here only when no tenants file was given, so the message says what to give.
LATER_KEYS = {"preset": _NO_TENANTS, "presets": _NO_TENANTS}


def blocks_field(value: Any, at: str) -> Blocks:
    try:
        return parse_blocks(value)
    except StrengthError as err:
        raise SpecError(f"{at}: {err}") from None


def schedule_field(value: Any, at: str) -> tuple[tuple[float, float], ...]:
    try:
        return parse_schedule(value)
    except StrengthError as err:
        raise SpecError(f"{at}: {err}") from None


def combo_strength(value: Any, at: str) -> Strength:
    """A combine entry's value: a weight, or {weight | te/unet, blocks, schedule}."""
    if not isinstance(value, dict):
        return Strength.plain(as_number(value, at, strings=True))
    check_keys(value, STRENGTH_KEYS, at)
    weight = get_field(value, "weight")
    te, unet = get_field(value, "te"), get_field(value, "unet")
    if weight is None and te is None and unet is None:
        raise SpecError(f"{at}: give weight, or te and/or unet")
    w = as_number(weight, f"{at}.weight", strings=True) if weight is not None else None
    te_w = as_number(te, f"{at}.te", strings=True) if te is not None else w
    unet_w = as_number(unet, f"{at}.unet", strings=True) if unet is not None else w
    if te_w is None or unet_w is None:
        # A1111's rule: an unset UNet weight follows the text encoder's, and back.
        te_w = unet_w if te_w is None else te_w
        unet_w = te_w if unet_w is None else unet_w
    blocks = get_field(value, "blocks")
    schedule = get_field(value, "schedule")
    return Strength(
        te_w, unet_w,
        blocks_field(blocks, f"{at}.blocks") if blocks is not None else None,
        schedule_field(schedule, f"{at}.schedule") if schedule is not None else None,
    )  # fmt: skip


def get_field(m: dict, key: str, default: Any = None) -> Any:
    """m[key], with a YAML null (`key:` and nothing after it) meaning 'not given'."""
    value = m.get(key)
    return default if value is None else value


def required_field(m: dict, key: str, what: str, at: str = "") -> Any:
    value = m.get(key)
    if value is None:
        raise SpecError(f"{_join(at, key)}: required ({what})")
    return value


def _join(at: str, key: Any) -> str:
    return f"{at}.{key}" if at else str(key)


def check_keys(m: dict, known: Iterable[str], at: str) -> None:
    known = tuple(known)
    for key in m:
        if key in known:
            continue
        if (not at and key in LATER_KEYS) or (at.startswith("loras[") and key in LATER_KEYS):
            raise SpecError(f"{_join(at, key)}: {LATER_KEYS[key]}")
        hint = suggest(str(key), known)
        raise SpecError(
            f"{_join(at, key)}: unknown key{hint or ' (known: ' + ', '.join(known) + ')'}"
        )


def as_mapping(value: Any, at: str, what: str = "a mapping") -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{at}: expected {what}, got {show(value)}")
    return value


def as_str(value: Any, at: str, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{at}: expected a string, got {show(value)}")
    if not empty_ok and not value.strip():
        raise SpecError(f"{at}: is empty")
    return value


def as_int(value: Any, at: str, lo: int, hi: int, what: str = "an integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{at}: expected {what}, got {show(value)}")
    if not lo <= value <= hi:
        raise SpecError(f"{at}: {value} is out of range ({lo}..{hi})")
    return value


def as_number(value: Any, at: str, strings: bool = False) -> float:
    if isinstance(value, str) and strings:
        try:
            x = float(value.strip())
        except ValueError:
            raise SpecError(f"{at}: {show(value)} is not a number") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            x = float(value)
        except OverflowError:
            raise SpecError(f"{at}: {value} is too large") from None
    else:
        raise SpecError(f"{at}: expected a number, got {show(value)}")
    if not math.isfinite(x):
        raise SpecError(f"{at}: {show(value)} is not a finite number")
    return x + 0.0


def as_local_path(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


S3_RE = re.compile(r"s3://[^/\s]+(/.*)?")


def s3_url(text: str, at: str) -> str:
    """`text` if it is an s3:// URL farm can use; SpecError naming `at` otherwise."""
    if not S3_RE.fullmatch(text):
        raise SpecError(f"{at}: {text!r} is not an s3:// URL (write s3://bucket/key)")
    if "//" in text[len("s3://") :].rstrip("/"):
        # S3 keeps an empty segment as part of the key: `a//b` is not `a/b`.
        raise SpecError(f"{at}: {text!r} has an empty segment ('//'); write each once")
    return text


def read_text_file(path: Path, where: str, kind: str, too_big: str,
                   not_text: str = "not UTF-8 text") -> str:  # fmt: skip
    """A UTF-8 text file of at most MAX_SPEC_BYTES, a leading BOM dropped; each way it
    cannot be read is one SpecError naming `where` (`kind`: what a folder is not;
    `too_big`: what follows "more than the 4 MiB")."""
    from farm.limits import MAX_SPEC_BYTES

    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{where}: {size / 2**20:.1f} MiB, more than the "
                            f"{MAX_SPEC_BYTES // 2**20} MiB {too_big}")  # fmt: skip
        # read_text's universal newlines: '\r\n' and '\r' end a line.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{where}: is a folder, not a {kind}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{where}: {not_text}") from None
    except OSError as e:
        raise SpecError(f"{where}: cannot read ({e.strerror})") from None
