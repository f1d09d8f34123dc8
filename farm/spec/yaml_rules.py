"""The YAML rules of farm's own files (specs, tenants.yaml): YAML 1.2 numbers, so a range
like `0:1:0.2` stays a string, and no silently repeated keys."""

from __future__ import annotations

import re
from typing import Any

import yaml

from farm.spec.errors import SpecError

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


def load_yaml(text: str, name: str) -> Any:
    """Parse a farm YAML file's text; a SpecError naming the file (and line) if it is bad."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{name}: invalid YAML{where}: {e.problem or e.context}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise SpecError(f"{name}: invalid YAML: {e}") from None
