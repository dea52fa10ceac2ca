"""Direct dispatch: which task queues get it on this history host.

A commit that schedules a block for dispatch now also starts it, and the transfer queue hands
matching the finished task; a poll waiting there takes it without a RecordBlockStarted call
(one call and one commit less per block). When no poll waits, matching persists the task and
history undoes the start in a commit of its own, so a queue whose tasks pile up in the backlog
would pay a commit more per task. So a queue gets direct dispatch while its latest task found
a waiting poll, and not after one that did not, until an ordinary task of it finds a poll.
"""

from __future__ import annotations

from collections import OrderedDict

from tideflow.api.v1 import common_pb2

_MAX_QUEUES = 10_000


class DirectDispatch:
    """Shared by the shards of one history host."""

    def __init__(self) -> None:
        # Queues whose latest task went to the backlog (most recent last).
        self._missed: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    def wanted(self, namespace_id: str, task_queue: common_pb2.TaskQueue) -> bool:
        return (namespace_id, task_queue.name, task_queue.kind) not in self._missed

    def note(self, namespace_id: str, task_queue: common_pb2.TaskQueue, *, matched: bool) -> None:
        """What matching said of a task of this queue: a waiting poll took it, or not."""
        key = (namespace_id, task_queue.name, task_queue.kind)
        if matched:
            self._missed.pop(key, None)
            return
        self._missed[key] = None
        self._missed.move_to_end(key)
        while len(self._missed) > _MAX_QUEUES:
            self._missed.popitem(last=False)
