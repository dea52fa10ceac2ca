"""Charts of a report (PNG, Agg): latency against achieved load, from the open-loop windows
of each system; and completions per second through a window where a process was killed."""

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


def dip_chart(systems: Sequence[SystemSummary], path: Path, *, title: str) -> bool:
    """Completions per second through each window with a killed process, the kill and the
    recovery marked, the offered rate dotted; False (and no file) when there is none."""
    faulty = [(s, w) for s in systems for w in s.windows if w.fault is not None]
    if not faulty:
        return False
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (system, window) in enumerate(faulty):
        assert window.fault is not None
        fault, color = window.fault, f"C{index}"
        per_second = fault["completions_by_second"]
        axes.step(range(len(per_second)), per_second, where="post", color=color,
                  label=f"{system.system}, {window.label}")  # fmt: skip
        axes.axvline(fault["at_s"], color=color, linestyle=":", label=f"{fault['process']} killed")
        if fault["recovered_s"] is not None:
            back = fault["at_s"] + fault["recovered_s"]
            axes.axvline(back, color=color, linestyle="--", alpha=0.6, label="back to 90%")
        if window.target_rate:
            axes.axhline(window.target_rate, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlabel("second of the window")
    axes.set_ylabel("runs completed in the second")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return True
