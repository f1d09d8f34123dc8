"""The live workers of a run: their start-up, and replacements for the ones that die."""

from __future__ import annotations

from collections.abc import Callable

from farm.run.affinity import Slot


class Pool:
    """The live workers, their start-up, and replacements for the ones that die."""

    def __init__(self, backend, slots: list[Slot], new_slot: Callable[[], Slot],
                 max_replacements: int):  # fmt: skip
        self.backend = backend
        self.slots = slots
        self.all_slots = list(slots)
        self.new_slot = new_slot
        self.replacements_left = max_replacements

    @property
    def all_ready(self) -> bool:
        return all(s.ready for s in self.slots)

    def ready_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.ready]

    def pending_refs(self) -> list:
        return [s.ready_ref for s in self.slots if not s.ready]

    def owns(self, slot: Slot) -> bool:
        return any(s is slot for s in self.slots)

    def mark_ready(self, ref, info: dict) -> None:
        for slot in self.slots:
            if slot.ready_ref == ref:
                slot.ready, slot.info = True, info

    def replace(self, dead) -> bool:
        """Swap a dead slot (or the slot whose start-up failed) for a new worker."""
        for index, slot in enumerate(self.slots):
            if slot is dead or slot.ready_ref == dead:
                self.backend.stop(slot.actor)
                if self.replacements_left <= 0:
                    del self.slots[index]
                    return bool(self.slots)
                self.replacements_left -= 1
                self.slots[index] = self.new_slot()
                self.all_slots.append(self.slots[index])
                return True
        return True

    def kill(self) -> None:
        for slot in self.slots:
            self.backend.stop(slot.actor)
