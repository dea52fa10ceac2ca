"""What can be read of a stored state that protobuf refuses as a whole (issue 17, item 2)."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence.salvage import salvage


def _state_with_a_deep_variable() -> records_pb2.MutableState:
    state = records_pb2.MutableState()
    state.execution_info.run_id = "r"
    state.execution_info.next_event_id = 7
    state.execution_info.vars["ok"].number_value = 1
    deep = state.execution_info.vars["deep"]
    for _ in range(60):
        deep = deep.list_value.values.add()
    deep.number_value = 1
    state.pending_blocks[3].block_id = "a"
    return state


def test_every_field_that_parses_is_kept_and_the_rest_named() -> None:
    data = _state_with_a_deep_variable().SerializeToString()
    with pytest.raises(DecodeError):
        records_pb2.MutableState.FromString(data)
    state, dropped = salvage(records_pb2.MutableState, data)
    assert dropped == ["execution_info.vars"]
    assert (state.execution_info.run_id, state.execution_info.next_event_id) == ("r", 7)
    assert list(state.execution_info.vars) == ["ok"]
    assert state.pending_blocks[3].block_id == "a"


def test_a_readable_record_is_kept_whole() -> None:
    state = records_pb2.MutableState()
    state.execution_info.run_id = "r"
    state.pending_blocks[3].block_id = "a"
    assert salvage(records_pb2.MutableState, state.SerializeToString()) == (state, [])


def test_corrupt_bytes_give_an_empty_record() -> None:
    state, dropped = salvage(records_pb2.MutableState, b"\xff\xff")
    assert state == records_pb2.MutableState()
    assert dropped == ["(the rest: corrupt)"]
