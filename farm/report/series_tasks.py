"""The report's per-series work, run in parallel and kept by content.

Measuring a series (reading its images, the distances, its strength animation) depends on
nothing but the series: its images, strengths and flags. Each is a task: on the Ray
cluster at `--address`, else on this machine's cores. A task reads and writes through the
job's store, so the images of an s3:// job never pass through the driver; it returns the
series' rows, which are small. Its result is kept under report/series/ by a key over
everything that shapes it, so a report of a grown or resumed job measures only what is new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from farm.report.key_set import KeySet
from farm.report.series import Series
from farm.report.tasks import TaskRunner

SERIES_CACHE = "report/series/"
# Bump when measuring or animating changes, so results kept by an older report are not used.
MEASURE_VERSION = 1


@dataclass(frozen=True)
class SeriesJob:
    """One series to measure, with the name its animation is written under."""

    series: Series
    animation: str  # the animation's key in the store
    caption: str  # the LoRA named on each frame

    @property
    def key(self) -> str:
        """A content key: the series' images (item and key), strengths and flags, and
        what the animation is drawn with."""
        shots = [(s, shot.item_id, shot.key, list(shot.flags)) for s, shot in self.series.shots]
        payload = [MEASURE_VERSION, self.series.lora, self.caption, shots]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


def measure_one(store_url: str, job: SeriesJob, cell_px: int) -> dict:
    """A task: measure one series, write its animation, keep the result; returns
    {"rows": …, "animation": key or None}."""
    from farm.report.animate import strength_animation
    from farm.report.measure import decode, measure
    from farm.storage import open_store

    store = open_store(store_url)
    rows, images = measure(job.series, lambda key: decode(store.get(key)), 0)
    frames = [(_caption(job.caption, s, shot), img)
              for (s, img), (_, shot) in zip(images, job.series.shots, strict=True)
              if img is not None]  # fmt: skip
    animation = None
    if len(frames) > 1:
        # An animation is watched at the image's own size (at least 128 px): small
        # renders enlarged to a sheet's cell would only make the file bigger.
        side = min(cell_px, max(128, *frames[0][1].size))
        animation = job.animation
        store.put(animation, strength_animation(frames, cell_px=side))
    result = {"rows": rows, "animation": animation}
    # NaN is kept as JSON's NaN: Python reads back what it wrote.
    store.put(f"{SERIES_CACHE}{job.key}-{cell_px}.json", json.dumps(result).encode())
    return result


def measure_all(store, jobs: Sequence[SeriesJob], cell_px: int, runner: TaskRunner,
                kept: KeySet, progress: Callable[[int, int], None] | None = None,
                ) -> Iterator[tuple[int, dict, bool]]:  # fmt: skip
    """(index, result, computed) for every job, kept results first; the others computed
    as tasks on `runner`. An animation kept under an older name is copied to the job's
    name. `kept`: the names under report/series/ (kept_results), listed once a report."""
    todo: list[int] = []
    done = 0
    for i, job in enumerate(jobs):
        name = f"{job.key}-{cell_px}.json"
        result = _kept(store, name) if name in kept else None
        if result is None:
            todo.append(i)
            continue
        if result["animation"] and result["animation"] != job.animation:
            store.put(job.animation, store.get(result["animation"]))
            result["animation"] = job.animation
        done += 1
        if progress:
            progress(done, len(jobs))
        yield i, result, False
    calls = [(store.url, jobs[i], cell_px) for i in todo]
    for i, result in runner.run(measure_one, calls):
        done += 1
        if progress:
            progress(done, len(jobs))
        yield todo[i], result, True


def kept_results(store) -> KeySet:
    return KeySet(k.removeprefix(SERIES_CACHE) for k in store.list(SERIES_CACHE))


def _kept(store, name: str) -> dict | None:
    """A kept result, or None when it cannot be read (it is then measured again)."""
    try:
        result = json.loads(store.get(f"{SERIES_CACHE}{name}"))
        if isinstance(result, dict) and isinstance(result.get("rows"), list):
            return result
    except Exception:  # noqa: BLE001 - a damaged cache entry is only a miss
        pass
    return None


def _caption(lora: str, strength: float, shot) -> str:
    from farm.spec.strength import format_number

    text = f"{lora} {format_number(strength)}"
    return f"{text} · {', '.join(shot.flags)}" if shot.flags else text
