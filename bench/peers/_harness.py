"""What both peer runs share: the plan file, the driver subprocess, its result."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from bench.peers._env import PeerEnv
from bench.peers._model import SCENARIOS, PeerPlan, PeerResult, window_from_json
from bench.peers._proc import ChildFailed, Children, log_tail

HERE = Path(__file__).resolve().parent

# After each window, the runs it measured get this long to complete before the next one.
DRAIN_S = 60.0


def check_plan(plan: PeerPlan) -> None:
    if plan.scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, not {plan.scenario!r}")
    if plan.warmup_runs < 0 or plan.sequential_runs < 0:
        raise ValueError("warmup_runs and sequential_runs must not be negative")
    if any(n < 1 for n in plan.closed_inflight):
        raise ValueError("closed_inflight values must be at least 1")
    if any(r <= 0 for r in plan.open_rates):
        raise ValueError("open_rates values must be positive")
    if plan.window_s <= 0 or plan.warmup_s < 0:
        raise ValueError("window_s must be positive and warmup_s not negative")


def driver_timeout_s(plan: PeerPlan) -> float:
    """Generous: a driver past this is stuck, not slow."""
    windows = len(plan.closed_inflight) + len(plan.open_rates)
    runs = plan.warmup_runs + plan.sequential_runs
    return 120 + 5 * runs + windows * (plan.warmup_s + plan.window_s + DRAIN_S + 10)


async def run_driver(
    children: Children,
    env: PeerEnv,
    script: str,
    plan: PeerPlan,
    *,
    cpu_processes: dict[str, int],
    cpu_trees: dict[str, int],
    peer: dict[str, Any],
) -> dict[str, Any]:
    """Run `<peer venv>/bin/python bench/peers/<script> --plan plan.json --out result.json`."""
    workdir = plan.workdir
    plan_file = workdir / "plan.json"
    result_file = workdir / "result.json"
    result_file.unlink(missing_ok=True)
    plan_file.write_text(
        json.dumps(
            {
                "scenario": plan.scenario,
                "warmup_runs": plan.warmup_runs,
                "sequential_runs": plan.sequential_runs,
                "closed_inflight": list(plan.closed_inflight),
                "open_rates": list(plan.open_rates),
                "warmup_s": plan.warmup_s,
                "window_s": plan.window_s,
                "drain_s": DRAIN_S,
                "cpu_processes": cpu_processes,
                "cpu_trees": cpu_trees,
                "peer": peer,
            },
            indent=2,
        )
    )
    driver = await children.start(
        "driver",
        [env.python, HERE / script, "--plan", plan_file, "--out", result_file],
        log=workdir / "driver.log",
        cwd=workdir,
    )
    timeout_s = driver_timeout_s(plan)
    load_before = os.getloadavg()[0]
    try:
        returncode = await asyncio.wait_for(driver.proc.wait(), timeout_s)
    except TimeoutError:
        raise ChildFailed(
            f"driver still running after {timeout_s:.0f} s:\n{log_tail(driver.log)}"
        ) from None
    if returncode != 0 or not result_file.exists():
        raise ChildFailed(f"driver exited with {returncode}:\n{log_tail(driver.log)}")
    out: dict[str, Any] = json.loads(result_file.read_text())
    # Other work on the machine skews every figure; say how busy it was.
    out.setdefault("notes", []).append(
        f"1-minute load average {load_before:.1f} when the driver started, "
        f"{os.getloadavg()[0]:.1f} when it ended, on {os.cpu_count()} CPUs"
    )
    return out


def peer_result(
    peer: str, plan: PeerPlan, driver_out: dict[str, Any], notes: list[str]
) -> PeerResult:
    return PeerResult(
        peer=peer,
        version=str(driver_out["version"]),
        scenario=plan.scenario,
        sequential_ms=[float(x) for x in driver_out["sequential_ms"]],
        windows=[window_from_json(w) for w in driver_out["windows"]],
        notes="; ".join([*notes, *driver_out.get("notes", [])]),
    )
