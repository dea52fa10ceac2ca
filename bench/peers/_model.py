"""What the harness asks of a peer run, and what comes back (the contract with bench/)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PEERS: tuple[str, ...] = ("temporal", "dbos")
SCENARIOS: tuple[str, ...] = ("seq3", "fanout", "payload")


@dataclass
class PeerPlan:
    scenario: str  # "seq3" | "fanout" | "payload"
    workdir: Path  # scratch dir for this peer run (server DB files, logs)
    postgres_dsn: str  # durable PostgreSQL the harness started (superuser, database "postgres")
    warmup_runs: int = 10  # sequential runs before measuring
    sequential_runs: int = 100  # one at a time, timed start-to-complete
    closed_inflight: list[int] = field(default_factory=list)  # closed loop: keep N in flight
    open_rates: list[float] = field(default_factory=list)  # open loop: start R runs/s
    warmup_s: float = 3.0  # per window, not measured
    window_s: float = 15.0  # per window, measured


@dataclass
class PeerWindow:
    mode: str  # "closed" | "open"
    inflight: int | None
    target_rate: float | None
    completed: int  # runs started in the measured window that completed
    seconds: float  # measured window length
    latencies_ms: list[float]  # start-to-complete of each completed run started in the window
    schedule_to_start_ms: list[float]  # per activity/step scheduled -> started, where exposed
    cpu_s: dict[str, float]  # CPU seconds per process during the measured window

    @property
    def runs_per_second(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class PeerResult:
    peer: str
    version: str
    scenario: str
    sequential_ms: list[float]
    windows: list[PeerWindow]
    notes: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PeerResult:
        return cls(
            peer=d["peer"],
            version=d["version"],
            scenario=d["scenario"],
            sequential_ms=[float(x) for x in d["sequential_ms"]],
            windows=[window_from_json(w) for w in d["windows"]],
            notes=d["notes"],
        )


def window_from_json(d: dict[str, Any]) -> PeerWindow:
    return PeerWindow(
        mode=d["mode"],
        inflight=d.get("inflight"),
        target_rate=d.get("target_rate"),
        completed=int(d["completed"]),
        seconds=float(d["seconds"]),
        latencies_ms=[float(x) for x in d["latencies_ms"]],
        schedule_to_start_ms=[float(x) for x in d.get("schedule_to_start_ms", [])],
        cpu_s={str(k): float(v) for k, v in d.get("cpu_s", {}).items()},
    )
