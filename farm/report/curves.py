"""The response curves as a PNG: distance from strength 0 against strength, per LoRA,
with onset, knee, break and the recommended range marked."""

from __future__ import annotations

import io
import math

from farm.report.response import Summary

MARKS = (("onset", "tab:green"), ("knee", "tab:orange"), ("break", "tab:red"))


def curves_png(summaries: list[Summary]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display: a report is written, never shown
    import matplotlib.pyplot as plt

    n = max(1, len(summaries))
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.6 * n), squeeze=False, dpi=110)
    for ax, summary in zip(axes[:, 0], summaries, strict=False):
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
