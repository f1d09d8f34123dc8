"""The response curves as a PNG: distance from strength 0 against strength, per LoRA,
with onset, knee, break and the recommended range marked. A training run comes first:
every checkpoint's curve on one plot, in training order, with their consistency under it."""

from __future__ import annotations

import io
import math

from farm.report.response import Summary
from farm.report.runs import RunComparison, checkpoint_label

MARKS = (("onset", "tab:green"), ("knee", "tab:orange"), ("break", "tab:red"))


def curves_png(summaries: list[Summary], runs: list[RunComparison] = ()) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display: a report is written, never shown
    import matplotlib.pyplot as plt

    heights = [h for _ in runs for h in (3.6, 2.0)] + [3.6] * len(summaries)
    fig, axes = plt.subplots(max(1, len(heights)), 1, figsize=(8, sum(heights) or 3.6),
                             squeeze=False, dpi=110,
                             gridspec_kw={"height_ratios": heights or [1]})  # fmt: skip
    panels = iter(axes[:, 0])
    for run in runs:
        _plot_run(next(panels), next(panels), run)
    for ax, summary in zip(panels, summaries, strict=False):
        _plot(ax, summary)
    if not summaries:
        axes[0, 0].text(0.5, 0.5, "no LoRA strength is swept in this job", ha="center",
                        va="center", transform=axes[0, 0].transAxes)  # fmt: skip
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _plot(ax, summary: Summary) -> None:
    xs = [p.strength for p in summary.points]
    lines = (("pixel distance from 0", [p.pixel for p in summary.points], "-o"),
             ("structure (weighted 1 − SSIM)", [p.structure for p in summary.points], "-s"),
             ("changed pixels (> 20/255)", [p.changed for p in summary.points], "--^"))  # fmt: skip
    for label, ys, style in lines:
        ax.plot(xs, ys, style, label=label, markersize=4)
    flagged = [(p.strength, p.flagged) for p in summary.points if p.flagged > 0]
    if flagged:
        ax.bar([s for s, _ in flagged], [f for _, f in flagged], width=0.04 * (max(xs) - min(xs)),
               color="tab:red", alpha=0.25, label="share flagged")  # fmt: skip
    if summary.recommended:
        lo, hi = summary.recommended
        ax.axvspan(lo, hi, color="tab:green", alpha=0.08, label="recommended range")
    values = {"onset": summary.onset, "knee": summary.knee, "break": summary.break_at}
    # Labels sit at three heights so that close landmarks never print over each other.
    for row, (name, colour) in enumerate(MARKS):
        x = values[name]
        if x is None or math.isnan(x):
            continue
        ax.axvline(x, color=colour, linewidth=1.2, linestyle=":")
        ax.annotate(f"{name} {x:g}", xy=(x, 1.0 - 0.09 * row), xycoords=("data", "axes fraction"),
                    xytext=(3, -2), textcoords="offset points", va="top", color=colour,
                    fontsize=9, fontweight="bold")  # fmt: skip
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"{summary.lora} strength")
    ax.set_ylabel("distance (0–1)")
    ax.set_title(f"{summary.curve}: response over {summary.points[0].series} series")
    ax.set_xticks(xs, minor=True)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right", fontsize=8)


def _plot_run(ax, below, run: RunComparison) -> None:
    """Each checkpoint's pixel distance from 0 (darker = earlier), the recommended one
    drawn thick, and under it each checkpoint's spread across series at each strength."""
    from matplotlib import colormaps

    colours = colormaps["viridis"]
    n = len(run.candidates)
    for i, c in enumerate(run.candidates):
        points = c.summary.points
        xs = [p.strength for p in points]
        colour = colours(i / max(1, n - 1) * 0.9)
        chosen = c is run.chosen
        label = checkpoint_label(c.name, c.place) + (" (recommended)" if chosen else "")
        ax.plot(xs, [p.pixel for p in points], "-o", color=colour, markersize=3,
                linewidth=3 if chosen else 1.2, label=label)  # fmt: skip
        below.plot(xs, [p.spread for p in points], "-o", color=colour, markersize=3,
                   linewidth=3 if chosen else 1.2)  # fmt: skip
    if run.chosen is not None and run.chosen.summary.recommended:
        lo, hi = run.chosen.summary.recommended
        ax.axvspan(lo, hi, color="tab:green", alpha=0.08, label="its recommended range")
    ax.set_title(f"{run.title}: {n} checkpoints, in training order")
    ax.set_ylabel("pixel distance from 0")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    below.set_title("consistency: spread of the distance from 0 across prompts and seeds "
                    "(std / mean; lower is steadier)", fontsize=9)  # fmt: skip
    below.set_xlabel(f"{run.run} strength")
    below.set_ylabel("spread")
    below.set_ylim(bottom=0)
    below.grid(True, alpha=0.3)
