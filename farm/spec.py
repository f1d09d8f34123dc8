"""The job spec: read a YAML or JSON file, validate it, get a Spec.

The front door for the rest of farm: the data model lives in farm/spec_model.py, the
validation in farm/spec_parse.py, and both are re-exported here. Nothing here imports
torch or ray: `farm plan` and `farm --help` must stay fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from farm.limits import MAX_SPEC_BYTES
from farm.spec_errors import SpecError
from farm.spec_model import Catalog, Combos, LoraAxis, Render, Spec, strength_to_spec
from farm.spec_parse import parse_spec, parse_strengths, with_output

__all__ = [
    "Catalog",
    "Combos",
    "LoraAxis",
    "Render",
    "Spec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "parse_strengths",
    "strength_to_spec",
    "with_output",
]


# libyaml's parser when PyYAML has it: the pure-Python one spends 20 s on a 4 MiB spec.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """SafeLoader with YAML 1.2 numbers and no silently repeated keys.

    YAML 1.1 reads `0:1:0.2` as a base-60 number (60.2) and `1:10:1` as 4201, which
    would turn an unquoted range into a wrong strength; here they stay strings.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if not isinstance(node, yaml.MappingNode):  # `!!set` on a scalar: SafeLoader says so
            return super().construct_mapping(node, deep)
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                pass
        return super().construct_mapping(node, deep)


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for ch, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$|^0x[0-9a-fA-F_]+$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$"
        r"|^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def load_spec(path: str | Path) -> Spec:
    """Read a YAML (.yaml/.yml) or JSON (.json) spec file and validate it."""
    path = Path(path)
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json") and path.is_file():
        raise SpecError(f"{name}: unknown spec format (use a .yaml, .yml or .json file)")
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(
                f"{name}: {size / 2**20:.1f} MiB, more than the {MAX_SPEC_BYTES // 2**20} MiB "
                "a spec may hold; put long prompt lists in a catalog (catalog: {path: "
                "prompts.csv, template: '{prompt}', key: id}), which farm streams"
            )
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{name}: is a folder, not a spec file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{name}: not UTF-8 text") from None
    except OSError as e:
        raise SpecError(f"{name}: cannot read ({e.strerror})") from None
    if suffix == ".json":
        try:
            data = json.loads(text, object_pairs_hook=lambda kv: _no_repeats(kv, name))
        except json.JSONDecodeError as e:
            raise SpecError(f"{name}: invalid JSON at line {e.lineno}: {e.msg}") from None
        except RecursionError:
            raise SpecError(f"{name}: invalid JSON: nested too deeply") from None
    else:
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f" at line {mark.line + 1}" if mark else ""
            raise SpecError(f"{name}: invalid YAML{where}: {e.problem or e.context}") from None
        except (yaml.YAMLError, RecursionError) as e:
            raise SpecError(f"{name}: invalid YAML: {e}") from None
    return parse_spec(data, source=name, base_dir=path.absolute().parent)


def _no_repeats(pairs: list[tuple[str, Any]], name: str) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"{name}: invalid JSON: duplicate key {key!r}")
        out[key] = value
    return out
