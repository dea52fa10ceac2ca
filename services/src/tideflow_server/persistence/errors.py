"""The closed set of errors every persistence backend raises.

Backends translate their drivers' exceptions into exactly these types, so the services above
map each one to one behaviour (drop the shard, reload and retry, reject the request, back off)
without knowing which database is underneath.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tideflow_server.persistence.records import CurrentRunRow


class PersistenceError(Exception):
    """Base of every persistence error."""


class ShardOwnershipLost(PersistenceError):
    """The shard's range_id moved on: another history host owns it now.

    The holder must stop writing for the shard and drop it; nothing of the failed write is
    visible.
    """

    def __init__(self, *, shard_id: int, expected_range_id: int, actual_range_id: int | None):
        self.shard_id = shard_id
        self.expected_range_id = expected_range_id
        self.actual_range_id = actual_range_id
        super().__init__(
            f"shard {shard_id}: write fenced at range_id {expected_range_id}, "
            f"store has {actual_range_id}"
        )


class ConditionFailed(PersistenceError):
    """A conditional write lost: the row changed since it was read (db_version, range_id of a
    task queue, or state of a current-run pointer). Reload and decide again."""


class FlowChanged(ConditionFailed):
    """A create's `flow_check` failed: a newer version of the flow is registered. Nothing was
    written; read the latest version and start again."""


class CurrentRunConditionFailed(ConditionFailed):
    """Creating an execution conflicted with the run_id's current-run pointer.

    Carries the pointer as it is in the store, so StartRun can answer idempotently (same
    request id), apply the reuse policy, or report the open run.
    """

    def __init__(self, current: CurrentRunRow, message: str) -> None:
        self.current = current
        super().__init__(message)


class AlreadyExists(PersistenceError):
    """A create met an existing row with the same key."""


class NotFound(PersistenceError):
    """The row asked for does not exist."""


class SizeLimitExceeded(PersistenceError):
    """A blob, batch or history would exceed a configured limit; nothing was written.
    `setting` names the configuration key that sets the limit."""

    def __init__(
        self, *, what: str, size: int, limit: int, setting: str, unit: str = " bytes"
    ) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        self.setting = setting
        super().__init__(
            f"{what} would be {size}{unit}, over the limit of {limit}{unit} (setting {setting})"
        )


class InvalidPageToken(PersistenceError):
    """A page token this store did not issue (or one from another query)."""


class Unavailable(PersistenceError):
    """The database could not be reached or timed out; the outcome of a write is unknown.

    Callers treat the affected state as stale (reload before the next decision).
    """
