"""Job progress: a live bar on a terminal, plain periodic lines anywhere else."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Counts rendered images; shows images, rate, ETA and busy workers.

    On a terminal one line is redrawn in place at most `redraw` times a second; in logs
    (not a terminal) a plain line is printed every `every` seconds and at the end.
    """

    def __init__(self, total: int, echo: Callable[[str], object] = print,
                 stream: TextIO | None = None, every: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.total, self.echo, self.every = total, echo, every
        # Seconds, for the rate and the redraw interval; tests pass their own to step it.
        self.clock = clock
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.busy = self.workers = 0
        self.start = self.clock()
        self.last = float("-inf") if self.live else self.start
        self.drawn = False
        self.begun = False

    def begin(self) -> None:
        """Rendering starts now: the rate leaves out worker start-up."""
        if not self.begun:
            self.begun = True
            self.start = self.clock()

    def update(self, images: int) -> None:
        self.done += images

    def show(self, busy: int, workers: int) -> None:
        self.busy, self.workers = busy, workers
        now = self.clock()
        if now - self.last < (0.2 if self.live else self.every):
            return
        self.last = now
        if self.live:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + self.line(bar=True)[: width - 1] + "\x1b[K")
            self.stream.flush()
            self.drawn = True
        else:
            self.echo("  " + self.line())

    def line(self, bar: bool = False) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = _duration((self.total - self.done) / rate) if rate else "?"
        pct = 100 * self.done / self.total if self.total else 100.0
        text = f"{self.done}/{self.total} images {pct:3.0f}% · {rate:.2f} img/s · ETA {eta}"
        if self.workers:  # a count of render workers, where there are any to count
            text += f" · {self.busy}/{self.workers} workers busy"
        if not bar:
            return text
        filled = int(24 * pct / 100)
        return f"[{'#' * filled}{'.' * (24 - filled)}] {text}"

    def clear(self) -> None:
        """Erase the live line so a message prints on a clean line."""
        if self.live and self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def finish(self) -> None:
        if self.live:
            self.clear()
        if self.done:
            self.echo("  " + self.line())


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class LazyProgress:
    """A `progress(done, total)` callback for work that learns its total as it starts
    (verify's images, a report's series): a Progress made on the first call."""

    def __init__(self, echo: Callable[[str], object] = print,
                 stream: TextIO | None = None) -> None:  # fmt: skip
        self.echo, self.stream = echo, stream
        self.bar: Progress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(total, echo=self.echo, stream=self.stream)
        self.bar.done = done
        self.bar.show(0, 0)  # no render workers to count

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()
