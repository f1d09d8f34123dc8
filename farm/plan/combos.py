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
            self.checkpointed = False
            return
        if not isinstance(spec.combine, str):
            self.explicit = tuple(tuple(c) for c in spec.combine)
            self.axes: list[list[tuple[str, Strength]]] = []
            self.count = len(self.explicit)
            self.names = frozenset(n for c in self.explicit for n, _ in c)
            self.checkpointed = False
            return
        swept = spec.loras if spec.combine == "zip" else [x for x in spec.loras if x.alphas]
        # A training run is one axis: each of its checkpoints at each strength, so every
        # image uses exactly one checkpoint of the run.
        self.axes = [[(n, w) for n in x.names for w in x.strengths()] for x in swept]
        self.zip = spec.combine == "zip"
        self.names = frozenset(n for x in swept for n in x.names)
        self.checkpointed = any(x.checkpoints for x in swept)
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
        """Every combination sets the same LoRAs (product and zip, without checkpoints)."""
        return self.explicit is None and not self.checkpointed

    @property
    def swept(self) -> int | None:
        """Where in a combination the one strength that varies sits, when exactly one
        does: a run's checkpoints count as one axis, and a LoRA at one fixed strength (a
        companion, such as a speed LoRA under a style sweep) as part of the base."""
        if self.explicit is not None:
            return 0 if len(self.names) == 1 else None
        varying = [i for i, axis in enumerate(self.axes) if len(axis) > 1]
        if len(varying) == 1:
            return varying[0]
        return 0 if len(self.axes) == 1 else None
