"""Latency against achieved load, from the open-loop windows of each system (PNG, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.report import SystemSummary


def latency_chart(systems: Sequence[SystemSummary], path: Path, *, title: str) -> bool:
    """Plot p50 (solid) and p99 (dashed) start-to-complete latency against achieved runs/s
    for every system with open-loop windows; False (and no file) when there are none."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    plotted = False
    for index, system in enumerate(systems):
        windows = sorted(
            (w for w in system.windows if w.mode == "open" and w.latency_ms is not None),
            key=lambda w: w.target_rate or 0.0,
        )
        if not windows:
            continue
        color = f"C{index}"
        # Achieved load: what the system completed inside the window where it says so (an
        # overloaded open loop completes its runs later, at less than the offered rate).
        load = [w.closed_in_window_per_s or w.runs_per_s for w in windows]
        p50 = [w.latency_ms.p50 for w in windows if w.latency_ms is not None]
        p99 = [w.latency_ms.p99 for w in windows if w.latency_ms is not None]
        axes.plot(load, p50, "o-", color=color, label=f"{system.system} p50")
        axes.plot(load, p99, "s--", color=color, label=f"{system.system} p99")
        for w, x, y in zip(windows, load, p99, strict=True):
            axes.annotate(
                f"{w.target_rate:g}/s",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
                color=color,
            )
        plotted = True
    if not plotted:
        return False
    axes.set_yscale("log")
    axes.set_xlabel("achieved load (runs completed per second inside the window)")
    axes.set_ylabel("start-to-complete latency (ms)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=120)
    return True
