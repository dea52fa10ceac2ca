"""An external block's routing: priority bounds, affinity and fairness keys rendered from the
run, the sticky wait; and which queue history sends each attempt to (`dispatch_of`)."""

from __future__ import annotations

import pytest

from tests.unit.interpreter.support import compile_, external, view
from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow_server.history.blocks import dispatch_of
from tideflow_server.history.interpreter import ScheduleExternal, decide
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.rpc.errors import InvalidArgument


def _violations(**ext: object) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as raised:
        compile_(external("a", external={"block": "ocr@1", "taskQueue": "gpu", **ext}))
    return {v.field: v.description for v in raised.value.violations}


def test_keys_render_from_the_run_and_travel_with_the_command() -> None:
    compiled = compile_(
        external(
            "embed",
            external={
                "block": "embed@1",
                "taskQueue": "gpu",
                "priority": 1,
                "affinityKey": "${input.model}",
                "fairnessKey": "tenant-${input.customer}",
                "stickyScheduleToStart": "0.5s",
            },
        )
    )
    [command] = decide(compiled, view(input={"model": "llama", "customer": 42}))
    assert isinstance(command, ScheduleExternal)
    assert (command.priority, command.affinity_key, command.fairness_key) == (
        1,
        "llama",
        "tenant-42",
    )
    assert command.sticky_schedule_to_start is not None
    assert command.sticky_schedule_to_start.ToMilliseconds() == 500


def test_a_block_without_keys_has_empty_ones() -> None:
    [command] = decide(compile_(external("a")), view())
    assert isinstance(command, ScheduleExternal)
    assert (command.affinity_key, command.fairness_key, command.sticky_schedule_to_start) == (
        "",
        "",
        None,
    )


@pytest.mark.parametrize("priority", [-1, 6])
def test_priority_out_of_range_is_refused_with_its_path(priority: int) -> None:
    assert (
        "must be 1 (first) to 5 (last)"
        in _violations(priority=priority)["blocks[0].external.priority"]
    )


def test_a_key_that_does_not_compile_is_refused_with_its_path() -> None:
    found = _violations(affinityKey="${input.}", fairnessKey="${nope(}")
    assert "blocks[0].external.affinity_key" in found
    assert "blocks[0].external.fairness_key" in found


def test_a_sticky_wait_over_a_minute_is_refused() -> None:
    found = _violations(stickyScheduleToStart="61s")
    assert "at most 60s" in found["blocks[0].external.sticky_schedule_to_start"]


def _pending(
    affinity: blueprint_pb2.Affinity.ValueType, attempt: int = 1
) -> records_pb2.PendingBlock:
    pending = records_pb2.PendingBlock(
        attempt=attempt, affinity=affinity, task_queue=common_pb2.TaskQueue(name="gpu")
    )
    pending.dispatch.priority = 2
    pending.dispatch.fairness_key = "acme"
    return pending


def test_affinity_run_sends_the_first_try_to_the_last_workers_sticky_queue() -> None:
    info = records_pb2.RunExecutionInfo(sticky_task_queues={"gpu": "w1-sticky", "cpu": "w2"})
    dispatch = dispatch_of(info, _pending(blueprint_pb2.AFFINITY_RUN))
    assert (dispatch.sticky_task_queue, dispatch.priority, dispatch.fairness_key) == (
        "w1-sticky",
        2,
        "acme",
    )


def test_retries_resends_and_blocks_without_affinity_go_to_the_queue() -> None:
    info = records_pb2.RunExecutionInfo(sticky_task_queues={"gpu": "w1-sticky"})
    assert not dispatch_of(info, _pending(blueprint_pb2.AFFINITY_RUN, attempt=2)).sticky_task_queue
    assert not dispatch_of(info, _pending(blueprint_pb2.AFFINITY_NONE)).sticky_task_queue
    resent = _pending(blueprint_pb2.AFFINITY_RUN)
    resent.redispatched_time.GetCurrentTime()
    assert not dispatch_of(info, resent).sticky_task_queue
    first_block = dispatch_of(records_pb2.RunExecutionInfo(), _pending(blueprint_pb2.AFFINITY_RUN))
    assert not first_block.sticky_task_queue
