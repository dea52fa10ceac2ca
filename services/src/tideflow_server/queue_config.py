"""A task queue's config (`TaskQueueConfig`): its bounds, how an update merges into the config in
force, and the defaults its unset fields stand for. The frontend checks updates with it; matching
merges and enforces them; history and the frontend read the partition count from it."""

from __future__ import annotations

import math
from collections.abc import Iterable

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from tideflow.api.v1 import task_queue_pb2

MAX_RATE_PER_SECOND = 100_000.0
MIN_RATE_PER_SECOND = 0.001
"""The slowest rate a queue or a poller may ask for (one task in about 17 minutes); 0 is none.
Slower ones would split over partitions into rates a token bucket cannot represent."""
MAX_BURST = 100_000
DEFAULT_PARTITIONS = 4
MAX_PARTITIONS = 64
MAX_CONCURRENCY = 100_000
MAX_FAIRNESS_WEIGHT = 1000.0
MAX_FAIRNESS_WEIGHTS = 1000
MAX_BLOCK_CONCURRENCY_TYPES = 1000
DEFAULT_STICKY_SCHEDULE_TO_START_S = 2.0
MAX_STICKY_SCHEDULE_TO_START_S = 60.0
MAX_WARM_KEYS = 100
MIN_PRIORITY, DEFAULT_PRIORITY, MAX_PRIORITY = 1, 3, 5

FIELDS = frozenset(task_queue_pb2.TaskQueueConfig.DESCRIPTOR.fields_by_name)


def check(
    config: task_queue_pb2.TaskQueueConfig, mask: Iterable[str], *, prefix: str = "config."
) -> list[tuple[str, str]]:
    """Every problem of the fields `mask` names (all fields when it is empty), as (field path,
    description); an unknown mask path is one too."""
    paths = list(mask) or sorted(FIELDS)
    problems: list[tuple[str, str]] = []
    for path in paths:
        if path not in FIELDS:
            problems.append(
                ("update_mask", f"unknown field {path!r}; known: {', '.join(sorted(FIELDS))}")
            )
    chosen = set(paths)
    c = config

    def bad(field: str, message: str) -> None:
        problems.append((prefix + field, message))

    if "rate_per_second" in chosen and not rate_ok(c.rate_per_second):
        bad(
            "rate_per_second",
            f"is {c.rate_per_second}, must be 0 (none) or in "
            f"[{MIN_RATE_PER_SECOND:g}, {MAX_RATE_PER_SECOND:g}]",
        )
    if "burst" in chosen and not 0 <= c.burst <= MAX_BURST:
        bad("burst", f"is {c.burst}, must be in [0, {MAX_BURST}]")
    if "partitions" in chosen and not 0 <= c.partitions <= MAX_PARTITIONS:
        bad("partitions", f"is {c.partitions}, must be in [0, {MAX_PARTITIONS}] (0 = default)")
    if "max_concurrency" in chosen and not 0 <= c.max_concurrency <= MAX_CONCURRENCY:
        bad("max_concurrency", f"is {c.max_concurrency}, must be in [0, {MAX_CONCURRENCY}]")
    if "block_concurrency" in chosen:
        if len(c.block_concurrency) > MAX_BLOCK_CONCURRENCY_TYPES:
            bad("block_concurrency", f"has more than {MAX_BLOCK_CONCURRENCY_TYPES} block types")
        for block_type, limit in sorted(c.block_concurrency.items()):
            if not block_type:
                bad("block_concurrency", "a block type must not be empty")
            if not 0 <= limit <= MAX_CONCURRENCY:
                bad(
                    f"block_concurrency[{block_type}]",
                    f"is {limit}, must be in [0, {MAX_CONCURRENCY}]",
                )
    if "fairness_weights" in chosen:
        if len(c.fairness_weights) > MAX_FAIRNESS_WEIGHTS:
            bad("fairness_weights", f"has more than {MAX_FAIRNESS_WEIGHTS} keys")
        for key, weight in sorted(c.fairness_weights.items()):
            if not (math.isfinite(weight) and 0 < weight <= MAX_FAIRNESS_WEIGHT):
                bad(
                    f"fairness_weights[{key}]",
                    f"is {weight}, must be in (0, {MAX_FAIRNESS_WEIGHT:g}]",
                )
    if "sticky_schedule_to_start" in chosen:
        seconds = c.sticky_schedule_to_start.ToNanoseconds() / 1e9
        if not 0 <= seconds <= MAX_STICKY_SCHEDULE_TO_START_S:
            bad(
                "sticky_schedule_to_start",
                f"is {seconds:g}s, must be in [0s, {MAX_STICKY_SCHEDULE_TO_START_S:g}s]",
            )
    return problems


def rate_ok(rate: float) -> bool:
    """0 (no limit), or a finite rate in [MIN_RATE_PER_SECOND, MAX_RATE_PER_SECOND]."""
    return rate == 0 or (math.isfinite(rate) and MIN_RATE_PER_SECOND <= rate <= MAX_RATE_PER_SECOND)


def merge(
    current: task_queue_pb2.TaskQueueConfig,
    update: task_queue_pb2.TaskQueueConfig,
    mask: field_mask_pb2.FieldMask,
) -> task_queue_pb2.TaskQueueConfig:
    """`current` with the fields `mask` names taken from `update` (every field when it names
    none); maps are replaced whole, not merged key by key."""
    merged = task_queue_pb2.TaskQueueConfig()
    merged.CopyFrom(current)
    message: Message = merged  # fields by name, which the generated stub types as literals
    source: Message = update
    for path in list(mask.paths) or sorted(FIELDS):
        message.ClearField(path)
        field = task_queue_pb2.TaskQueueConfig.DESCRIPTOR.fields_by_name[path]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(merged, path).update(getattr(update, path))
        elif field.message_type is not None:
            if source.HasField(path):
                getattr(merged, path).CopyFrom(getattr(update, path))
        else:
            setattr(merged, path, getattr(update, path))
    return merged


def partitions(config: task_queue_pb2.TaskQueueConfig) -> int:
    """How many partitions adds spread over."""
    return config.partitions or DEFAULT_PARTITIONS


def write_partitions(config: task_queue_pb2.TaskQueueConfig) -> int:
    """How many partitions history adds to. A queue whose rules hold queue-wide only when one
    place orders and counts its tasks (in-flight first, concurrency limits) takes its adds at
    the root alone: its other partitions only drain what they held and forward their polls
    there. Order and limits then hold exactly, at the cost of spreading that queue's dispatch
    over hosts."""
    if config.in_flight_first or config.max_concurrency or any(config.block_concurrency.values()):
        return 1
    return partitions(config)


def burst(config: task_queue_pb2.TaskQueueConfig) -> int:
    return config.burst or max(1, math.ceil(config.rate_per_second))


def sticky_schedule_to_start_s(
    config: task_queue_pb2.TaskQueueConfig, block_setting_s: float = 0.0
) -> float:
    """The block's own setting, else the queue's, else the default."""
    if block_setting_s > 0:
        return block_setting_s
    if config.HasField("sticky_schedule_to_start"):
        return config.sticky_schedule_to_start.ToNanoseconds() / 1e9
    return DEFAULT_STICKY_SCHEDULE_TO_START_S


def priority(value: int) -> int:
    """0 (unset) is the default level."""
    return value or DEFAULT_PRIORITY
