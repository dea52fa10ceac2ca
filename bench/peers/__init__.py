"""Peer runners: the same scenarios on Temporal and DBOS, measured the way bench/ measures
Tideflow, on the same machine.

    result = await run_peer("temporal", PeerPlan(scenario="seq3", workdir=..., postgres_dsn=...))

Each peer runs from its own virtual environment (see `_env`), its server and worker in
their own processes, and a driver script (`<peer>_driver.py`) in a third that generates
the load (`_loadgen`) and writes the figures back. Everything started is stopped when
`run_peer` returns, raises or is cancelled. See README.md here for what each peer runs.
"""

from __future__ import annotations

from bench.peers import _dbos, _temporal
from bench.peers._harness import check_plan
from bench.peers._model import PEERS, SCENARIOS, PeerPlan, PeerResult, PeerWindow

__all__ = ["PEERS", "SCENARIOS", "PeerPlan", "PeerResult", "PeerWindow", "run_peer"]


async def run_peer(name: str, plan: PeerPlan) -> PeerResult:
    """Run `plan` against the peer `name` (one of PEERS) and return its figures."""
    check_plan(plan)
    if name == "temporal":
        return await _temporal.run(plan)
    if name == "dbos":
        return await _dbos.run(plan)
    raise ValueError(f"peer must be one of {', '.join(PEERS)}, not {name!r}")
