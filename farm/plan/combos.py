"""The sweep's LoRA combinations: explicit, zipped or a product of strength axes, made on
demand and counted by arithmetic."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from farm.spec import Spec
from farm.spec.strength import Strength


class Combos:
    """The sweep's LoRA combinations, made on demand: a product of axes is never a list.

    `count` is arithmetic, so a plan of 10¹² items is counted (and refused) at once.
    """

    def __init__(self, spec: Spec):
        self.explicit: tuple | None = None
        self.labels: tuple[str | None, ...] = ()  # the preset of each explicit combination
        if spec.presets and not spec.row_presets:
            names = tuple(x.name for x in spec.loras)
            self.explicit = tuple(p.bind(names) for p in spec.presets)
            self.labels = tuple(p.preset for p in spec.presets)
            self.axes = []
            self.count = len(self.explicit)
            self.names = frozenset(n for c in self.explicit for n, _ in c)
            return
        if not isinstance(spec.combine, str):
            self.explicit = tuple(tuple(c) for c in spec.combine)
            self.axes: list[list[tuple[str, Strength]]] = []
            self.count = len(self.explicit)
            self.names = frozenset(n for c in self.explicit for n, _ in c)
            return
        swept = spec.loras if spec.combine == "zip" else [x for x in spec.loras if x.alphas]
        self.axes = [[(x.name, w) for w in x.strengths()] for x in swept]
        self.zip = spec.combine == "zip"
        self.names = frozenset(x.name for x in swept)
        if self.zip:
            self.count = len(self.axes[0]) if self.axes else 1
        else:
            self.count = math.prod(len(axis) for axis in self.axes)

    def labelled(self) -> Iterator[tuple[tuple[tuple[str, Strength], ...], str | None]]:
        """Each combination with the preset it came from (None without presets)."""
        if self.labels:
            return zip(self.explicit, self.labels, strict=True)
        return ((combo, None) for combo in self)

    def __iter__(self) -> Iterator[tuple[tuple[str, Strength], ...]]:
        if self.explicit is not None:
            return iter(self.explicit)
        if self.zip and self.axes:
            return zip(*self.axes, strict=True)
        return itertools.product(*self.axes)

    def __len__(self) -> int:
        return self.count

    @property
    def uniform(self) -> bool:
        """Every combination sets the same LoRAs (product and zip)."""
        return self.explicit is None
