"""Settings of the matching role, with the limits invariant 6 asks for."""

from __future__ import annotations

from dataclasses import dataclass

from tideflow_server.persistence.manager import TASK_ID_BITS


@dataclass(frozen=True, slots=True)
class MatchingConfig:
    """Durations are in seconds."""

    long_poll_timeout: float = 60.0
    """How long a poll waits for a task before it is answered empty."""
    backlog_read_batch: int = 100
    """Backlog tasks read per query; the reader reads while the buffer holds fewer than
    `fair_window`."""
    fair_window: int = 10_000
    """Backlog tasks a partition reads ahead into memory (a pointer each, a few hundred bytes),
    so that priority and fairness can order them: a task not read yet cannot go first."""
    backlog_write_batch: int = 100
    """Most adds the writer groups into one create_backlog_tasks call."""
    ack_persist_interval: float = 10.0
    """How often a partition persists its ack level and deletes the backlog below it."""
    idle_unload_after: float = 300.0
    """A partition with no poll and no add for this long is unloaded (ack level persisted)."""
    max_outstanding_polls: int = 1000
    """Polls one partition holds at once; more are refused with RESOURCE_EXHAUSTED."""
    poller_expiry: float = 300.0
    """Describe lists the pollers seen within this window."""
    retry_backoff: float = 0.2
    """Pause after RecordBlockStarted failed with anything but "stale" (the task is kept), and
    between failed backlog reads."""
    sync_match_wait: float = 0.2
    """How long an add with no poll waiting (and no backlog) waits in memory for a poll before
    it is persisted; 0 persists it at once."""
    direct_dedupe_s: float = 600.0
    """How long an attempt handed out by direct dispatch is remembered, so that the same
    attempt added again (a retried add, a redelivered outbox task) is not handed out twice."""
    direct_dedupe_max: int = 100_000
    """Most attempts remembered; the oldest are forgotten first."""
    config_refresh: float = 5.0
    """How often a partition other than the root reads the queue's config from the root's row,
    so that a config push it missed (ApplyTaskQueueConfig) still reaches it."""
    sticky_poller_gone_after: float = 3.0
    """A sticky queue with no poll outstanding for this long has lost its worker: offers to it
    fall back to the normal queue at once instead of after the sticky timeout. Longer than a
    worker takes to poll again after a task, shorter than a sticky timeout is worth waiting."""
    affinity_live_for: float = 5.0
    """Key affinity: a worker of a queue with no poll outstanding on this host counts as live
    (a possible owner of keys) this long after its last poll. Longer than a busy worker takes
    to poll again; a stopped worker's keys move to the others after it."""
    task_id_bits: int = TASK_ID_BITS
    """Backlog task ids are `range_id << task_id_bits | seq`, like the history outbox."""
    forward_backoff: float = 0.02
    """A leaf partition with backlog and no poll of its own offers its tasks to the root one
    at a time; after the root had no poll for one, it waits this long before the next offer,
    doubling up to `forward_backoff_max`."""
    forward_backoff_max: float = 0.25
    forward_retry_budget: float = 1.0
    """How long a forwarded add keeps trying a root owner that is unavailable (moving)
    before the leaf keeps the task itself."""

    def __post_init__(self) -> None:
        for name in (
            "long_poll_timeout",
            "ack_persist_interval",
            "idle_unload_after",
            "config_refresh",
            "affinity_live_for",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "backlog_read_batch",
            "fair_window",
            "backlog_write_batch",
            "max_outstanding_polls",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.sync_match_wait < 0:
            raise ValueError("sync_match_wait must be >= 0")
        for name in ("retry_backoff", "forward_backoff", "forward_retry_budget"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.forward_backoff_max < self.forward_backoff:
            raise ValueError("forward_backoff_max must be >= forward_backoff")
        if self.sticky_poller_gone_after < 0:
            raise ValueError("sticky_poller_gone_after must be >= 0")
        if not 1 <= self.task_id_bits < 63:
            raise ValueError("task_id_bits must be in [1, 63)")
        if self.backlog_write_batch >= 1 << self.task_id_bits:
            raise ValueError("backlog_write_batch must fit in one range of task ids")
