"""The report model, shared by Tideflow's measurements and the peers': raw windows in, the same
summaries out (percentiles from HdrHistogram), then JSON and a markdown summary.

A `Window` holds the raw samples of one measured window, with the fields of
`bench.peers.PeerWindow` plus what only Tideflow's harness measures (database counters,
failures, start lag); `Window.from_peer` and `SystemRun.from_peer` read a peer's objects by
attribute, so the peers package is never needed to summarise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

SECONDS_PER_DAY = 86_400
# Latencies are recorded in microseconds, from 1 µs to 10 minutes, to 3 significant digits.
_LOWEST_US, _HIGHEST_US, _DIGITS = 1, 600_000_000, 3


@dataclass
class Window:
    mode: str
    """"closed" (a fixed number of runs in flight) or "open" (a target start rate)."""
    inflight: int | None
    target_rate: float | None
    completed: int
    """Runs started in the window that completed: the numerator of runs/s and of per-run
    costs (the contract of `bench.peers.PeerWindow`)."""
    seconds: float
    """The window's length."""
    latencies_ms: list[float]
    """Start-to-complete latency of each run started in the window that completed."""
    schedule_to_start_ms: list[float]
    """Schedule-to-start latency of each block task of those runs."""
    cpu_s: dict[str, float]
    """CPU seconds each process (or process group) used over the window."""
    started: int | None = None
    """Runs started in the window (Tideflow only; None when not measured)."""
    failed: int | None = None
    unfinished: int | None = None
    start_lag_ms: list[float] = field(default_factory=list)
    """Open loop: how late each start was issued after it fell due (driver saturation)."""
    db: dict[str, int] = field(default_factory=dict)
    """Database counter deltas over the window: "commits", "write_xacts"."""
    closed_in_window: int | None = None
    """Runs of any start time that completed inside the window: what the system sustained,
    and the runs the window's CPU and commits paid for. It falls below `completed` when the
    system falls behind an open loop and the window's runs complete during the drain. None
    when not measured (then per-run costs divide by `completed`)."""
    latency_by_second: list[list[float]] = field(default_factory=list)
    """`latencies_ms` grouped by the second of the window the run's start fell in (Tideflow
    only; empty when not measured)."""
    fault: dict[str, Any] | None = None
    """A process killed during the window (`bench.hostloss.FaultResult`), or None."""

    @classmethod
    def from_peer(cls, window: Any) -> Window:
        """A `bench.peers.PeerWindow` (read by attribute)."""
        return cls(
            mode=str(window.mode),
            inflight=window.inflight,
            target_rate=window.target_rate,
            completed=int(window.completed),
            seconds=float(window.seconds),
            latencies_ms=[float(v) for v in window.latencies_ms],
            schedule_to_start_ms=[float(v) for v in window.schedule_to_start_ms],
            cpu_s={str(k): float(v) for k, v in dict(window.cpu_s).items()},
            closed_in_window=getattr(window, "closed_in_window", None),
        )

    @property
    def label(self) -> str:
        if self.mode == "open":
            return f"open {self.target_rate:g}/s"
        return f"closed {self.inflight}"


@dataclass
class SystemRun:
    """One system's measurements on one scenario and load plan: Tideflow's or a peer's."""

    system: str
    version: str
    scenario: str
    sequential_ms: list[float]
    windows: list[Window]
    notes: str = ""
    sequential_schedule_to_start_ms: list[float] = field(default_factory=list)

    @classmethod
    def from_peer(cls, result: Any) -> SystemRun:
        """A `bench.peers.PeerResult` (read by attribute)."""
        return cls(
            system=str(result.peer),
            version=str(result.version),
            scenario=str(result.scenario),
            sequential_ms=[float(v) for v in result.sequential_ms],
            windows=[Window.from_peer(w) for w in result.windows],
            notes=str(result.notes),
        )


@dataclass
class Distribution:
    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    histogram: str
    """The HdrHistogram (microseconds), compressed and base64-encoded as every HdrHistogram
    implementation reads it (`HdrHistogram.decode`)."""


def distribution(values_ms: Sequence[float]) -> Distribution | None:
    if not values_ms:
        return None
    histogram = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)
    for value in values_ms:
        histogram.record_value(min(max(round(value * 1000), _LOWEST_US), _HIGHEST_US))
    at = histogram.get_percentile_to_value_dict([50, 95, 99])

    def ms(us: float) -> float:
        return round(us / 1000, 2)

    return Distribution(
        count=histogram.get_total_count(),
        p50=ms(at[50]),
        p95=ms(at[95]),
        p99=ms(at[99]),
        max=ms(histogram.get_max_value()),
        mean=ms(histogram.get_mean_value()),
        histogram=histogram.encode().decode(),
    )


@dataclass
class WindowSummary:
    label: str
    mode: str
    inflight: int | None
    target_rate: float | None
    seconds: float
    completed: int
    runs_per_s: float
    runs_per_day: int
    latency_ms: Distribution | None
    schedule_to_start_ms: Distribution | None
    cpu_ms_per_run: dict[str, float]
    """Per process, and "total"."""
    db_commits_per_run: float | None
    db_write_xacts_per_run: float | None
    db_bytes_per_run: float | None
    """PostgreSQL's growth on disk over the window per run (before any retention)."""
    started: int | None
    failed: int | None
    unfinished: int | None
    start_lag_p99_ms: float | None
    closed_in_window_per_s: float | None
    closed_in_window: int | None
    cpu_s: dict[str, float]
    """The raw deltas the per-run figures come from."""
    db: dict[str, int]
    by_second: list[SecondSummary] = field(default_factory=list)
    """Latency per second of the window (by start): where a p99 comes from, a stall or a
    steady queue."""
    fault: dict[str, Any] | None = None


@dataclass
class SecondSummary:
    second: int
    runs: int
    p50: float | None
    p99: float | None
    max: float | None


def _seconds(latency_by_second: Sequence[Sequence[float]]) -> list[SecondSummary]:
    out: list[SecondSummary] = []
    for second, values in enumerate(latency_by_second):
        d = distribution(values)
        out.append(
            SecondSummary(
                second,
                len(values),
                d.p50 if d else None,
                d.p99 if d else None,
                d.max if d else None,
            )
        )
    return out


def slowest_second(window: WindowSummary) -> SecondSummary | None:
    timed = [s for s in window.by_second if s.p99 is not None]
    return max(timed, key=lambda s: s.p99 or 0.0) if timed else None


def _per_run(amount: float, runs: int) -> float:
    return round(amount / runs, 3) if runs else math.nan


def summarise(window: Window) -> WindowSummary:
    rate = window.completed / window.seconds if window.seconds > 0 else 0.0
    # Costs read at the window's edges pay for the runs that completed between them; only a
    # peer that does not count those falls back to the window's own runs (equal when steady).
    work = window.completed if window.closed_in_window is None else window.closed_in_window
    cpu = {name: _per_run(seconds * 1000, work) for name, seconds in window.cpu_s.items()}
    if cpu:
        cpu["total"] = _per_run(sum(window.cpu_s.values()) * 1000, work)
    lag = distribution(window.start_lag_ms)
    return WindowSummary(
        label=window.label,
        mode=window.mode,
        inflight=window.inflight,
        target_rate=window.target_rate,
        seconds=window.seconds,
        completed=window.completed,
        runs_per_s=round(rate, 1),
        runs_per_day=round(rate * SECONDS_PER_DAY),
        latency_ms=distribution(window.latencies_ms),
        schedule_to_start_ms=distribution(window.schedule_to_start_ms),
        cpu_ms_per_run=cpu,
        db_commits_per_run=(
            _per_run(window.db["commits"], work) if "commits" in window.db else None
        ),
        db_write_xacts_per_run=(
            _per_run(window.db["write_xacts"], work) if "write_xacts" in window.db else None
        ),
        db_bytes_per_run=_per_run(window.db["bytes"], work) if "bytes" in window.db else None,
        started=window.started,
        failed=window.failed,
        unfinished=window.unfinished,
        start_lag_p99_ms=lag.p99 if lag is not None else None,
        closed_in_window=window.closed_in_window,
        cpu_s=dict(window.cpu_s),
        db=dict(window.db),
        closed_in_window_per_s=(
            round(window.closed_in_window / window.seconds, 1)
            if window.closed_in_window is not None and window.seconds > 0
            else None
        ),
        by_second=_seconds(window.latency_by_second),
        fault=window.fault,
    )


@dataclass
class SystemSummary:
    system: str
    version: str
    scenario: str
    sequential_ms: Distribution | None
    sequential_schedule_to_start_ms: Distribution | None
    windows: list[WindowSummary]
    notes: str


def summarise_system(run: SystemRun) -> SystemSummary:
    return SystemSummary(
        system=run.system,
        version=run.version,
        scenario=run.scenario,
        sequential_ms=distribution(run.sequential_ms),
        sequential_schedule_to_start_ms=distribution(run.sequential_schedule_to_start_ms),
        windows=[summarise(w) for w in run.windows],
        notes=run.notes,
    )


@dataclass
class Report:
    created: str
    scenario: str
    topology: str
    backend: str
    plan: dict[str, Any]
    environment: dict[str, Any]
    systems: list[SystemSummary]
    """Tideflow first, then each peer."""
    errors: dict[str, str] = field(default_factory=dict)
    """Systems that could not be measured, and why."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        return _markdown(self)


# -- markdown -------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _rate(w: WindowSummary) -> str:
    """Runs/s, and the rate of runs closing inside the window where it tells otherwise (the
    cluster fell behind and the window's runs completed during the drain)."""
    sustained = w.closed_in_window_per_s
    if sustained is None or abs(sustained - w.runs_per_s) <= 0.1 * w.runs_per_s:
        return _num(w.runs_per_s)
    return f"{_num(w.runs_per_s)} ({_num(sustained)} closed in window)"


def _commits(w: WindowSummary) -> str:
    if w.db_commits_per_run is None:
        return "-"
    return f"{_num(w.db_commits_per_run, 2)} ({_num(w.db_write_xacts_per_run, 2)})"


def _join(values: Sequence[float] | None, unit: str) -> str:
    return ", ".join(f"{v:g}" for v in values) + unit if values else "none"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _dist(d: Distribution | None, *names: str) -> list[str]:
    return [_num(getattr(d, n) if d is not None else None) for n in names]


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs or math.isnan(ours) or math.isnan(theirs):
        return "-"
    return f"{ours / theirs:.2f}x"


def _markdown(report: Report) -> str:
    env = report.environment
    plan = report.plan
    tideflow = report.systems[0]
    out = [
        f"# {report.scenario} on {report.topology} / {report.backend}",
        "",
        f"{report.created} · Tideflow {tideflow.version} · commit {env.get('commit', '?')}"
        f" · {env.get('cpus', '?')} CPUs · load average {env.get('loadavg_start', '?')} before,"
        f" {env.get('loadavg_end', '?')} after · CPU probe {env.get('cpu_probe_ms_start', '?')}"
        f" ms before, {env.get('cpu_probe_ms_end', '?')} ms after (bench/README.md)",
        "",
        f"Plan: {plan.get('warmup_runs')} warm-up runs, {plan.get('sequential_runs')} sequential"
        f" runs; closed loop: {_join(plan.get('closed_inflight'), ' in flight')}; open loop:"
        f" {_join(plan.get('open_rates'), ' runs/s')}; {plan.get('warmup_s')} s warm-up and"
        f" {plan.get('window_s')} s window each. Driver: {plan.get('driver')}; workers:"
        f" {plan.get('worker_processes')} process(es), {plan.get('worker_pollers')} pollers and"
        f" {plan.get('worker_concurrency')} slots each.",
        "",
    ]
    if tideflow.sequential_ms is not None:
        out += [
            f"**Sequential start-to-complete median: {tideflow.sequential_ms.p50:.1f} ms**"
            " (target < 15 ms).",
            "",
        ]
    out += ["## Sequential (one run at a time)", ""]
    out += _table(
        ["system", "runs", "p50 ms", "p95 ms", "p99 ms", "max ms", "sched-to-start p50 ms"],
        [
            [
                s.system,
                str(s.sequential_ms.count if s.sequential_ms else 0),
                *_dist(s.sequential_ms, "p50", "p95", "p99", "max"),
                *_dist(s.sequential_schedule_to_start_ms, "p50"),
            ]
            for s in report.systems
        ],
    )
    out += ["", "## Load windows", ""]
    out += _table(
        [
            "system",
            "window",
            "runs/s",
            "runs/day",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "sched-to-start p50 / p99 ms",
            "CPU ms/run",
            "PG commits/run (writes)",
            "failed / unfinished",
            "start lag p99 ms",
        ],
        [
            [
                s.system,
                w.label,
                _rate(w),
                f"{w.runs_per_day:,}",
                *_dist(w.latency_ms, "p50", "p95", "p99"),
                " / ".join(_dist(w.schedule_to_start_ms, "p50", "p99")),
                _num(w.cpu_ms_per_run.get("total")),
                _commits(w),
                f"{_num(w.failed, 0)} / {_num(w.unfinished, 0)}",
                _num(w.start_lag_p99_ms),
            ]
            for s in report.systems
            for w in s.windows
        ],
    )
    database = {
        "sqlite": "SQLite has no commit counter here (PG commits: -).",
        "cassandra": "On Cassandra, PG commits count PostgreSQL visibility only; Cassandra"
        " writes: n/a.",
    }
    for backend in report.backend.split("+"):
        if backend in database:
            out += ["", database[backend]]
    growth = [
        f"{s.system}, {w.label}: {w.db_bytes_per_run:,.0f} bytes"
        for s in report.systems
        for w in s.windows
        if w.db_bytes_per_run is not None
    ]
    if growth:
        out += ["", "PostgreSQL's growth on disk per run (before retention): " + "; ".join(growth)]
    out += _slowest_seconds(report.systems)
    out += _faults(report.systems)
    out += _cpu_table(report.systems)
    if len(report.systems) > 1:
        out += _ratios(report.systems)
    for s in report.systems:
        if s.notes:
            out += ["", f"Notes ({s.system}): {s.notes}"]
    for system, error in report.errors.items():
        out += ["", f"**{system} not measured:** {error}"]
    out += [
        "",
        "Definitions (bench/README.md): a run counts in a window when its start fell in the"
        " window; runs/s is counted runs that completed / the window's length; latency is"
        " start-to-complete of those runs; CPU and PG commits per run are the window's deltas /"
        " the runs that completed inside it; runs/day = runs/s x 86,400.",
        "",
    ]
    return "\n".join(out)


def _faults(systems: Sequence[SystemSummary]) -> list[str]:
    """A section per window with a killed process: the kill, the handover, the dip."""
    out: list[str] = []
    for s in systems:
        for w in s.windows:
            if (f := w.fault) is None:
                continue
            reowned = f"{f['reowned_s']} s" if f["reowned_s"] is not None else "not seen"
            recovered = f"{f['recovered_s']} s" if f["recovered_s"] is not None else "never"
            out += [
                "",
                f"## Host loss ({s.system}, {w.label})",
                "",
                f"- `{f['process']}` killed (SIGKILL, not restarted) {f['at_s']} s into the"
                f" window; its {f['shards_moved']} shards owned again after **{reowned}**.",
                f"- Throughput back to >= 90% of the offered rate (3 s in a row) **{recovered}**"
                f" after the kill; the fewest completions in a second: {f['lowest_per_s']}.",
                f"- Runs lost: **{len(f['lost'])}** of {f['runs_checked']} started in the"
                f" window (each read back); runs with a block completed twice:"
                f" **{len(f['duplicated'])}** of the {f['histories_checked']} in flight at"
                " the kill (whole histories read).",
                "",
                "Completions per second (any start time), from the window's start:",
                "",
                "```",
                *_per_second_lines(f["completions_by_second"], f["at_s"]),
                "```",
            ]
    return out


def _per_second_lines(per_second: Sequence[int], kill_at: float) -> list[str]:
    widest = max(per_second, default=0) or 1
    lines = []
    for second, n in enumerate(per_second):
        mark = " <- kill" if second == math.floor(kill_at) else ""
        lines.append(f"{second:>4} s {n:>5} {'#' * round(40 * n / widest)}{mark}")
    return lines


def _slowest_seconds(systems: Sequence[SystemSummary]) -> list[str]:
    lines = []
    for s in systems:
        for w in s.windows:
            worst = slowest_second(w)
            if worst is not None and len(w.by_second) > 1:
                lines.append(
                    f"- {s.system}, {w.label}: second {worst.second} of the window,"
                    f" {worst.runs} runs, p50 {_num(worst.p50)} ms, p99 {_num(worst.p99)} ms"
                    f" (every second: `by_second` in the JSON)"
                )
    return ["", "Slowest second of each window (by start time):", "", *lines] if lines else []


def _cpu_table(systems: Sequence[SystemSummary]) -> list[str]:
    names: list[str] = []
    for s in systems:
        for w in s.windows:
            names += [n for n in w.cpu_ms_per_run if n not in names and n != "total"]
    if not names:
        return []
    out = ["", "## CPU ms per run, by process", ""]
    return out + _table(
        ["system", "window", *names, "total"],
        [
            [
                s.system,
                w.label,
                *(_num(w.cpu_ms_per_run.get(n), 2) for n in names),
                _num(w.cpu_ms_per_run.get("total"), 2),
            ]
            for s in systems
            for w in s.windows
        ],
    )


def _ratios(systems: Sequence[SystemSummary]) -> list[str]:
    tideflow, peers = systems[0], systems[1:]
    rows: list[list[str]] = []
    for peer in peers:
        theirs = {(w.mode, w.inflight, w.target_rate): w for w in peer.windows}
        if tideflow.sequential_ms and peer.sequential_ms:
            rows.append(
                [
                    peer.system,
                    "sequential",
                    "-",
                    f"{_num(tideflow.sequential_ms.p50)} / {_num(peer.sequential_ms.p50)}",
                    _ratio(tideflow.sequential_ms.p50, peer.sequential_ms.p50),
                ]
            )
        for ours in tideflow.windows:
            other = theirs.get((ours.mode, ours.inflight, ours.target_rate))
            if other is None:
                continue
            ours_p50 = ours.latency_ms.p50 if ours.latency_ms else None
            their_p50 = other.latency_ms.p50 if other.latency_ms else None
            rows.append(
                [
                    peer.system,
                    ours.label,
                    f"{_num(ours.runs_per_s)} / {_num(other.runs_per_s)}"
                    f" ({_ratio(ours.runs_per_s, other.runs_per_s)})",
                    f"{_num(ours_p50)} / {_num(their_p50)}",
                    _ratio(ours_p50, their_p50),
                ]
            )
    out = [
        "",
        f"## {tideflow.system} / others",
        "",
        f"Throughput ratio above 1 and median-latency ratio below 1 favour {tideflow.system}."
        " Same scenario, load plan and machine; the systems ran one after another.",
        "",
    ]
    return out + _table(
        ["other", "window", "runs/s first / other (ratio)", "p50 ms first / other", "p50 ratio"],
        rows,
    )
