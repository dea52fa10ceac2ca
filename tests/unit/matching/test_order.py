"""The dispatch order of a partition's buffer: priority levels, stride fairness over keys,
in-flight first, push-back (matching/order.py)."""

from __future__ import annotations

from collections import Counter
from itertools import count

from tideflow_server.internal.v1 import records_pb2
from tideflow_server.matching.order import DispatchOrder, Placement, placement

_ids = count(1)


def push(order: DispatchOrder[str], key: str, n: int, *, priority: int = 3, start: int = 0) -> None:
    for _ in range(n):
        task_id = next(_ids)
        order.push(f"{key}{task_id}", Placement(priority, key, start, task_id))


def keys_of(order: DispatchOrder[str], n: int) -> list[str]:
    got = []
    for _ in range(n):
        item = order.pop()
        assert item is not None
        got.append(item.rstrip("0123456789"))
    return got


def test_a_lower_level_always_goes_first() -> None:
    order: DispatchOrder[str] = DispatchOrder()
    push(order, "low", 3, priority=5)
    push(order, "mid", 3, priority=3)
    push(order, "top", 3, priority=1)
    assert keys_of(order, 9) == ["top"] * 3 + ["mid"] * 3 + ["low"] * 3
    assert order.pop() is None
    assert not order


def test_levels_come_from_the_dispatch_and_old_rows_are_clamped() -> None:
    def level(info: records_pb2.BacklogTask) -> int:
        return placement(info, 1).priority

    assert level(records_pb2.BacklogTask(dispatch=records_pb2.TaskDispatch(priority=1))) == 1
    assert level(records_pb2.BacklogTask(dispatch=records_pb2.TaskDispatch())) == 3
    # Rows written before TaskDispatch: the old field, 0 as 3, clamped to 1..5.
    assert level(records_pb2.BacklogTask(priority=0)) == 3
    assert level(records_pb2.BacklogTask(priority=9)) == 5
    assert level(records_pb2.BacklogTask(priority=-2)) == 1


def test_equal_weights_share_a_busy_level_evenly() -> None:
    order: DispatchOrder[str] = DispatchOrder()
    push(order, "a", 1000)
    push(order, "b", 10)  # read after a's whole burst
    first = keys_of(order, 20)
    assert Counter(first) == {"a": 10, "b": 10}
    assert first[:4] == ["a", "b", "a", "b"]  # ties go to the lower task id
    assert set(keys_of(order, 990)) == {"a"}


def test_weights_give_proportional_shares_and_are_reread() -> None:
    order: DispatchOrder[str] = DispatchOrder()
    order.configure(weights={"a": 2.0}, in_flight_first=False)
    push(order, "a", 100)
    push(order, "b", 100)
    assert Counter(keys_of(order, 30)) == {"a": 20, "b": 10}

    order.configure(weights={"b": 3.0}, in_flight_first=False)
    assert Counter(keys_of(order, 40)) == {"a": 10, "b": 30}


def test_a_key_that_was_idle_does_not_bank_credit() -> None:
    order: DispatchOrder[str] = DispatchOrder()
    push(order, "a", 200)
    push(order, "b", 1)
    assert Counter(keys_of(order, 2)) == {"a": 1, "b": 1}
    assert keys_of(order, 50) == ["a"] * 50  # b is idle meanwhile
    push(order, "b", 50)
    # b starts at the level's virtual time: it alternates with a, it does not get the 50
    # tasks a got while it had none.
    assert Counter(keys_of(order, 20)) == {"a": 10, "b": 10}

    push(order, "c", 50)  # a key never seen starts there too
    assert Counter(keys_of(order, 30)) == {"a": 10, "b": 10, "c": 10}


def test_in_flight_first_orders_a_key_by_run_start() -> None:
    order: DispatchOrder[str] = DispatchOrder()
    order.push("new-run-block-1", Placement(3, "", 20, 1))
    order.push("new-run-block-2", Placement(3, "", 21, 2))
    order.push("old-run-block-3", Placement(3, "", 10, 3))
    assert order.peek() == "new-run-block-1"  # off by default: task id order

    order.configure(weights={}, in_flight_first=True)
    assert [order.pop() for _ in range(3)] == [
        "old-run-block-3",
        "new-run-block-1",
        "new-run-block-2",
    ]


def test_a_task_pushed_back_gets_its_place_back() -> None:
    order: DispatchOrder[str] = DispatchOrder()
    push(order, "a", 3)
    push(order, "b", 3)
    first = order.pop()
    assert first is not None and first.startswith("a")
    order.push_back(first, Placement(3, "a", 0, int(first[1:])))
    assert order.pop() == first  # not b, which a's charged stride would have let through
    assert keys_of(order, 5) == ["b", "a", "b", "a", "b"]


def test_a_task_pushed_back_after_its_key_went_idle_goes_next() -> None:
    order: DispatchOrder[str] = DispatchOrder()
    push(order, "a", 1)
    push(order, "b", 5)
    only_a = order.pop()
    assert only_a is not None and only_a.startswith("a")
    assert keys_of(order, 1) == ["b"]
    order.push_back(only_a, Placement(3, "a", 0, int(only_a[1:])))
    assert order.pop() == only_a


def test_a_dropped_task_charges_nothing() -> None:
    order: DispatchOrder[str] = DispatchOrder()
    push(order, "a", 3)
    push(order, "b", 3)
    assert keys_of(order, 1) == ["a"]
    dropped = order.pop(charge=False)  # b's head, expired
    assert dropped is not None and dropped.startswith("b")
    assert keys_of(order, 2) == ["b", "a"]
    assert len(order) == 2
