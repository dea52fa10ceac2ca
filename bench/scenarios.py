"""The bench's scenarios: blueprints whose external blocks do no work, so what is measured is
the engine (persistence, dispatch, the interpreter) and not the blocks.

| scenario | shape | external blocks per run |
|---|---|---|
| seq3 | a -> b -> c | 3 |
| fanout | fan -> 10 parallel blocks -> join | 12 |
| payload | a -> b -> c, 64 KiB in and out of each | 3 |
| map | one `map` block over 100 items, a no-op external block per item | 100 |
| sticky | a -> b -> c -> d -> e, `affinity: run`, 2 workers without eager dispatch | 5 |
| model | one `model.predict@1` block, `affinity_key` the model's name | 1 |

`sticky` measures sticky queues: each block after the first goes first to the worker that
ran the run's previous one. Its workers run without eager dispatch (which would keep a chain
on one worker by itself), and the report's notes give the sticky hit ratio (the task queue's
sticky hits and fallbacks, from DescribeTaskQueue, over the whole bench).

Block types, served by the bench worker (bench/worker.py): `noop@1` returns nothing, `echo@1`
returns its input. `model` is the exception: its block is served by the model worker
(workers/ml_model), a real forward pass per batch, and bench/model.py runs it (one window per
max_batch setting) instead of the engine harness.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from typing import Any

PAYLOAD_BYTES = 64 * 1024
FANOUT_WIDTH = 10
MAP_ITEMS = 100
MODEL = "digits"
MODEL_FEATURES = [float(i * 7 % 17) for i in range(64)]
"""One 8x8 image's pixels (0..16) for the digits model; the values do not change the cost."""
BLOCK_TIMEOUTS = {"start_to_close": "30s"}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    external_blocks: int
    """External blocks (block tasks) one run executes."""
    worker_processes: int = 0
    """Worker processes the scenario needs at least (0: as the bench is told)."""
    eager: bool = True
    """Whether its workers take eager dispatch."""

    def blueprint(self, flow: str, task_queue: str) -> dict[str, Any]:
        """The blueprint's JSON mapping, registered as `flow` version 1 on `task_queue`."""
        return {
            "name": flow,
            "version": 1,
            "task_queue": task_queue,
            "timeouts": BLOCK_TIMEOUTS,
            "blocks": _blocks(self.name),
        }

    def run_input(self) -> Any:
        """The input every run of the scenario starts with."""
        if self.name == "payload":
            return {"data": _PAYLOAD}
        if self.name == "map":
            return {"items": list(range(MAP_ITEMS))}
        if self.name == "model":
            return {"model": MODEL, "features": MODEL_FEATURES}
        return None


def _chain(
    block_type: str, *, pass_on: bool, length: int = 3, affinity: str = ""
) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    previous = None
    for block_id in "abcdefghij"[:length]:
        block: dict[str, Any] = {"id": block_id, "external": {"block": block_type}}
        if affinity:
            block["external"]["affinity"] = affinity
        if previous is not None:
            block["needs"] = [previous]
        if pass_on:
            # Each block's output is the next one's input: 64 KiB in, 64 KiB out, every step.
            block["input"] = "${input}" if previous is None else f"${{blocks.{previous}.output}}"
        blocks.append(block)
        previous = block_id
    return blocks


def _blocks(name: str) -> list[dict[str, Any]]:
    if name == "seq3":
        return _chain("noop@1", pass_on=False)
    if name == "payload":
        return _chain("echo@1", pass_on=True)
    if name == "sticky":
        return _chain("noop@1", pass_on=False, length=5, affinity="AFFINITY_RUN")
    if name == "fanout":
        branches = [f"b{i}" for i in range(FANOUT_WIDTH)]
        return [
            {"id": "fan", "external": {"block": "noop@1"}},
            *({"id": b, "needs": ["fan"], "external": {"block": "noop@1"}} for b in branches),
            {"id": "join", "needs": branches, "external": {"block": "noop@1"}},
        ]
    if name == "map":
        # Every item at once (max_concurrency 0: the server's default, 100).
        inner = [{"id": "work", "external": {"block": "noop@1"}, "input": "${item}"}]
        return [{"id": "items", "map_block": {"items": "input.items", "blocks": inner}}]
    if name == "model":
        # The key is the model: matching routes the task to the worker advertising it warm.
        predict = {"block": "model.predict@1", "affinity_key": "${input.model}"}
        return [{"id": "predict", "external": predict, "input": "${input}"}]
    raise ValueError(f"unknown scenario {name!r}")


# Random characters, so nothing along the way can shrink the payload by compressing it.
_PAYLOAD = base64.b64encode(random.Random(7).randbytes(PAYLOAD_BYTES * 3 // 4)).decode()
assert len(_PAYLOAD) == PAYLOAD_BYTES

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("seq3", "3 sequential no-op external blocks", 3),
        Scenario(
            "fanout",
            f"1 block fanning out to {FANOUT_WIDTH} parallel blocks and a join",
            FANOUT_WIDTH + 2,
        ),
        Scenario(
            "payload",
            f"3 sequential blocks passing {PAYLOAD_BYTES // 1024} KiB on (output -> next input)",
            3,
        ),
        Scenario("map", f"one map block over {MAP_ITEMS} items, a no-op block each", MAP_ITEMS),
        Scenario(
            "sticky",
            "5 sequential no-op blocks with affinity: run, 2 workers without eager dispatch",
            5,
            worker_processes=2,
            eager=False,
        ),
        Scenario(
            "model",
            "one model.predict@1 block on the model worker, at several max_batch settings",
            1,
        ),
    )
}
