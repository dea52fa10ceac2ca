"""A task queue config's bounds and merge (queue_config.py): every problem with its field."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from tideflow.api.v1 import task_queue_pb2
from tideflow_server import queue_config


@pytest.mark.parametrize("rate", [5e-324, 0.0009, -1.0, float("nan"), 100_001.0])
def test_a_rate_no_bucket_can_hold_is_refused(rate: float) -> None:
    problems = queue_config.check(
        task_queue_pb2.TaskQueueConfig(rate_per_second=rate), ["rate_per_second"]
    )
    assert [field for field, _ in problems] == ["config.rate_per_second"]


def test_every_bad_field_is_named() -> None:
    config = task_queue_pb2.TaskQueueConfig(
        rate_per_second=0.001,  # the slowest taken
        partitions=65,
        block_concurrency={"ocr@1": -1},
        fairness_weights={"acme": 0.0},
        sticky_schedule_to_start=duration_pb2.Duration(seconds=61),
    )
    problems = queue_config.check(config, [])
    assert sorted(field for field, _ in problems) == [
        "config.block_concurrency[ocr@1]",
        "config.fairness_weights[acme]",
        "config.partitions",
        "config.sticky_schedule_to_start",
    ]
    assert [f for f, _ in queue_config.check(config, ["nope"])] == ["update_mask"]


def test_merge_takes_only_the_masked_fields_and_replaces_maps_whole() -> None:
    current = task_queue_pb2.TaskQueueConfig(
        rate_per_second=5, burst=2, fairness_weights={"a": 2.0, "b": 1.0}
    )
    update = task_queue_pb2.TaskQueueConfig(rate_per_second=9, burst=7, fairness_weights={"c": 3})
    merged = queue_config.merge(
        current, update, field_mask_pb2.FieldMask(paths=["burst", "fairness_weights"])
    )
    assert merged == task_queue_pb2.TaskQueueConfig(
        rate_per_second=5, burst=7, fairness_weights={"c": 3.0}
    )
