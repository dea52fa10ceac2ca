"""History: appended in batches, read in pages, visible only below the committed
next_event_id, and never shadowed by a failed writer's leftovers."""

from __future__ import annotations

import random

import pytest

from tests.persistence.builders import acquire, all_history, batch, key, new_execution, next_step
from tideflow_server.persistence import ConditionFailed, InvalidPageToken
from tideflow_server.persistence.records import ExecutionRow, HistoryBatch
from tideflow_server.persistence.sql import SqlPersistence


async def _run_with_batches(
    persistence: SqlPersistence, run_id: str, sizes: list[int]
) -> ExecutionRow:
    r = await acquire(persistence)
    create = new_execution(run_id, range_id=r, events=[batch(1, sizes[0], txn=r << 20)])
    await persistence.executions.create_execution(create)
    state = create.execution
    for i, size in enumerate(sizes[1:], start=1):
        step = next_step(
            state, range_id=r, events=[batch(state.next_event_id, size, txn=(r << 20) + i)]
        )
        await persistence.executions.update_execution(step)
        state = step.execution
    return state


async def test_history_reads_back_in_pages(persistence: SqlPersistence) -> None:
    sizes = [2, 1, 3, 1, 1, 4, 2, 1]
    state = await _run_with_batches(persistence, "pages", sizes)
    k = key("pages", state.execution_id)
    seen: list[tuple[int, int]] = []
    token = None
    pages = 0
    while True:
        page = await persistence.history.read_history(
            k, min_event_id=1, next_event_id=state.next_event_id, page_size=3, page_token=token
        )
        assert len(page.items) <= 3
        seen += [(b.first_event_id, b.event_count) for b in page.items]
        pages += 1
        if page.next_page_token is None:
            break
        token = page.next_page_token
    assert pages == 3
    firsts = [1]
    for size in sizes[:-1]:
        firsts.append(firsts[-1] + size)
    assert seen == list(zip(firsts, sizes, strict=True))
    assert state.next_event_id == 1 + sum(sizes)


async def test_history_read_from_a_batch_boundary(persistence: SqlPersistence) -> None:
    state = await _run_with_batches(persistence, "tail", [2, 3, 1])
    page = await persistence.history.read_history(
        key("tail", state.execution_id),
        min_event_id=6,
        next_event_id=state.next_event_id,
        page_size=10,
    )
    assert [(b.first_event_id, b.event_count) for b in page.items] == [(6, 1)]
    assert page.next_page_token is None


async def test_events_past_committed_next_event_id_are_never_returned(
    persistence: SqlPersistence,
) -> None:
    state = await _run_with_batches(persistence, "bounded", [2, 1])
    k = key("bounded", state.execution_id)
    # A writer that appended events and died before its conditional write left these behind.
    await persistence.history.append_history(k, [batch(4, 2, txn=10_000), batch(6, 1, txn=10_001)])
    assert [b.first_event_id for b in await all_history(persistence, k)] == [1, 3]
    assert (
        await persistence.history.read_history(
            k, min_event_id=4, next_event_id=state.next_event_id, page_size=10
        )
    ).items == []


async def test_failed_decision_leaves_no_visible_events(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    create = new_execution("lost", range_id=r)
    await persistence.executions.create_execution(create)
    winner = next_step(create.execution, range_id=r, events=[batch(3, 2, txn=(r << 20) + 1)])
    loser = next_step(
        create.execution, range_id=r, events=[batch(3, 5, txn=(r << 20) + 2, tag=b"loser")]
    )
    await persistence.executions.update_execution(winner)
    with pytest.raises(ConditionFailed):
        await persistence.executions.update_execution(loser)
    k = key("lost", create.execution.execution_id)
    assert [b.data for b in await all_history(persistence, k)][-1] != b"loser"
    assert (await all_history(persistence, k))[-1] == winner.events[0]


async def test_leftovers_of_failed_writers_are_skipped(persistence: SqlPersistence) -> None:
    """Leftovers at a committed batch's first id (lower txn_id: an older owner) or starting
    inside a committed batch are skipped; the committed chain reads back intact."""
    r = await acquire(persistence)
    create = new_execution("leftovers", range_id=r, events=[batch(1, 2, txn=(r << 20) + 5)])
    await persistence.executions.create_execution(create)
    k = key("leftovers", create.execution.execution_id)
    committed = next_step(
        create.execution, range_id=r, events=[batch(3, 3, txn=(r << 20) + 6, tag=b"committed")]
    )
    await persistence.executions.update_execution(committed)
    await persistence.history.append_history(
        k,
        [
            batch(1, 4, txn=r << 20, tag=b"older owner at 1"),
            batch(4, 1, txn=(r << 20) + 1, tag=b"inside 3..5"),
            batch(3, 1, txn=(r << 20) + 2, tag=b"older at 3"),
        ],
    )
    history = await all_history(persistence, k)
    assert [(b.first_event_id, b.data) for b in history] == [
        (1, b"events 1..2"),
        (3, b"committed"),
    ]


async def test_trim_removes_batches_from_an_event_id(persistence: SqlPersistence) -> None:
    state = await _run_with_batches(persistence, "trim", [2, 2])
    k = key("trim", state.execution_id)
    await persistence.history.append_history(k, [batch(5, 1, txn=99_999)])
    await persistence.history.trim_history(k, from_event_id=5)
    page = await persistence.history.read_history(
        k, min_event_id=1, next_event_id=100, page_size=10
    )
    assert [b.first_event_id for b in page.items] == [1, 3]


async def test_delete_history_removes_one_execution_only(persistence: SqlPersistence) -> None:
    """Retention's delete: every batch of the execution goes, again is a no-op, and another
    execution's history stays."""
    gone = await _run_with_batches(persistence, "gone", [2, 3, 1])
    kept = await _run_with_batches(persistence, "kept", [1, 1])
    k = key("gone", gone.execution_id)
    await persistence.history.delete_history(k)
    await persistence.history.delete_history(k)  # idempotent
    page = await persistence.history.read_history(
        k, min_event_id=1, next_event_id=gone.next_event_id, page_size=10
    )
    assert page.items == []
    left = await persistence.history.read_history(
        key("kept", kept.execution_id),
        min_event_id=1,
        next_event_id=kept.next_event_id,
        page_size=10,
    )
    assert [b.first_event_id for b in left.items] == [1, 2]


async def test_foreign_page_token_is_rejected(persistence: SqlPersistence) -> None:
    state = await _run_with_batches(persistence, "token", [1])
    with pytest.raises(InvalidPageToken):
        await persistence.history.read_history(
            key("token", state.execution_id),
            min_event_id=1,
            next_event_id=state.next_event_id,
            page_size=10,
            page_token=b"\x00garbage",
        )


@pytest.mark.parametrize("seed", range(4))
async def test_random_histories_with_leftovers_read_back_exactly(
    persistence: SqlPersistence, seed: int
) -> None:
    """Random batch sizes, leftovers of failed writers at random places (older txn ids) and
    random page sizes: paging always reassembles exactly the committed chain."""
    rng = random.Random(seed)
    r = await acquire(persistence)
    txn = r << 20
    sizes = [rng.randint(1, 4) for _ in range(rng.randint(5, 25))]
    create = new_execution(f"random-{seed}", range_id=r, events=[batch(1, sizes[0], txn=txn + 100)])
    await persistence.executions.create_execution(create)
    k = key(f"random-{seed}", create.execution.execution_id)
    state = create.execution
    committed = list(create.events)
    for i, size in enumerate(sizes[1:], start=1):
        first = state.next_event_id
        if rng.random() < 0.4:  # an older writer's leftover at or inside this step
            at = first - rng.randint(0, committed[-1].event_count - 1)
            await persistence.history.append_history(
                k, [batch(at, rng.randint(1, 5), txn=txn + rng.randint(0, 99), tag=b"leftover")]
            )
        step = next_step(state, range_id=r, events=[batch(first, size, txn=txn + 100 + i)])
        await persistence.executions.update_execution(step)
        committed += step.events
        state = step.execution
    # Leftovers past the end, as from a writer that died mid-decision.
    await persistence.history.append_history(k, [batch(state.next_event_id, 3, txn=txn + 999)])

    got: list[HistoryBatch] = []
    token = None
    while True:
        page = await persistence.history.read_history(
            k,
            min_event_id=1,
            next_event_id=state.next_event_id,
            page_size=rng.randint(1, 6),
            page_token=token,
        )
        got += page.items
        if page.next_page_token is None:
            break
        token = page.next_page_token
    assert got == committed
