"""The progress display: a redrawn bar on a terminal, plain lines in logs."""

from __future__ import annotations

import io

from farm.run.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """Seconds that pass only when the test says so: a slow machine changes nothing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_one_redrawn_bar_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the bar is cut to the terminal's width
    term, lines, clock = Terminal(), [], Clock()
    progress = Progress(40, lines.append, stream=term, clock=clock)
    progress.begin()
    clock.now += 2
    progress.update(10)
    progress.show(busy=3, workers=4)
    drawn = term.getvalue()
    assert drawn.startswith("\r[######..................] 10/40 images  25%")
    assert "5.00 img/s" in drawn and "ETA 6s" in drawn and "3/4 workers busy" in drawn
    assert drawn.endswith("\x1b[K") and "\n" not in drawn and lines == []
    progress.update(10)
    clock.now += 0.19
    progress.show(busy=0, workers=4)  # within the redraw interval: not drawn again
    assert term.getvalue() == drawn
    clock.now += 0.05
    progress.show(busy=0, workers=4)  # past 0.2 s since the last draw: redrawn in place
    redrawn = term.getvalue()[len(drawn) :]
    assert redrawn.startswith("\r[############............] 20/40 images  50%")
    progress.update(20)
    progress.finish()
    # The bar is erased and the final count printed as a normal line.
    assert term.getvalue().endswith("\r\x1b[K")
    assert lines and lines[-1].strip().startswith("40/40 images 100%")


def test_logs_get_plain_lines_at_most_every_interval():
    log, lines = io.StringIO(), []
    progress = Progress(16, lines.append, stream=log, every=3600)
    progress.update(8)
    progress.show(busy=2, workers=2)
    assert lines == [] and log.getvalue() == ""
    progress.every = 0
    progress.show(busy=2, workers=2)
    assert len(lines) == 1 and "8/16 images  50%" in lines[0] and "2/2 workers busy" in lines[0]
    assert "\r" not in lines[0] and "\x1b" not in lines[0]
    progress.update(8)
    progress.finish()
    assert "16/16 images 100%" in lines[-1] and "ETA 0s" in lines[-1]


def test_clear_erases_the_bar_before_a_message():
    term = Terminal()
    progress = Progress(4, lambda _: None, stream=term)
    progress.show(busy=1, workers=1)
    progress.clear()
    assert term.getvalue().endswith("\r\x1b[K")
    assert not progress.drawn
