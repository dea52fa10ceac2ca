"""Visibility: list runs with filters and paging, newest first."""

from __future__ import annotations

import pytest

from tideflow_server.persistence import NotFound
from tideflow_server.persistence.records import VisibilityFilter, VisibilityRow
from tideflow_server.persistence.sql import SqlPersistence

RUNNING, COMPLETED, FAILED = 1, 2, 3


def _run(i: int, *, flow: str = "intake", status: int = RUNNING) -> VisibilityRow:
    return VisibilityRow(
        namespace_id="ns-1",
        run_id=f"doc-{i}",
        execution_id=f"exec-{i:03d}",
        flow_name=flow,
        flow_version=1,
        task_queue="cpu",
        status=status,
        start_time_ms=1_000 * i,
        close_time_ms=None if status == RUNNING else 1_000 * i + 500,
    )


async def _all(persistence: SqlPersistence, f: VisibilityFilter, page_size: int) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = await persistence.visibility.list_runs(
            "ns-1", f, page_size=page_size, page_token=token
        )
        assert len(page.items) <= page_size
        ids += [r.run_id for r in page.items]
        if page.next_page_token is None:
            return ids
        token = page.next_page_token


async def test_list_runs_filters_and_pages(persistence: SqlPersistence) -> None:
    statuses = [RUNNING, COMPLETED, FAILED]
    for i in range(1, 13):
        flow = "intake" if i % 2 else "extract"
        await persistence.visibility.upsert_run(_run(i, flow=flow, status=statuses[i % 3]))
    await persistence.visibility.upsert_run(
        VisibilityRow(
            namespace_id="ns-2",
            run_id="other",
            execution_id="exec-x",
            flow_name="intake",
            flow_version=1,
            task_queue="cpu",
            status=RUNNING,
            start_time_ms=99_000,
        )
    )

    everything = await _all(persistence, VisibilityFilter(), page_size=5)
    assert everything == [f"doc-{i}" for i in range(12, 0, -1)]
    assert await persistence.visibility.count_runs("ns-1", VisibilityFilter()) == 12

    failed = VisibilityFilter(statuses=frozenset({FAILED}))
    assert await _all(persistence, failed, page_size=2) == ["doc-11", "doc-8", "doc-5", "doc-2"]
    closed_extract = VisibilityFilter(statuses=frozenset({COMPLETED, FAILED}), flow_name="extract")
    assert await _all(persistence, closed_extract, page_size=2) == [
        "doc-10",
        "doc-8",
        "doc-4",
        "doc-2",
    ]
    window = VisibilityFilter(start_time_min_ms=3_000, start_time_max_ms=7_000)
    assert await _all(persistence, window, page_size=10) == ["doc-6", "doc-5", "doc-4", "doc-3"]
    assert await _all(persistence, VisibilityFilter(run_id="doc-7"), page_size=10) == ["doc-7"]


async def test_closed_row_is_not_overwritten_by_a_late_open_one(
    persistence: SqlPersistence,
) -> None:
    started = _run(1)
    closed = _run(1, status=COMPLETED)
    await persistence.visibility.upsert_run(closed)
    await persistence.visibility.upsert_run(started)  # delivered late, or twice
    assert await persistence.visibility.get_run("ns-1", "exec-001") == closed

    await persistence.visibility.delete_run("ns-1", "exec-001")
    with pytest.raises(NotFound):
        await persistence.visibility.get_run("ns-1", "exec-001")


async def test_upsert_runs_writes_a_batch_in_order_and_closed_rows_win(
    persistence: SqlPersistence,
) -> None:
    """One batch with several runs, one run twice (start then close) and one closed run whose
    start comes after its close: each ends as upsert_run one by one would leave it."""
    await persistence.visibility.upsert_runs(
        [
            _run(1),
            _run(2),
            _run(1, status=COMPLETED),
            _run(3, status=FAILED),
            _run(3),
        ]
    )
    assert await persistence.visibility.get_run("ns-1", "exec-001") == _run(1, status=COMPLETED)
    assert await persistence.visibility.get_run("ns-1", "exec-002") == _run(2)
    assert await persistence.visibility.get_run("ns-1", "exec-003") == _run(3, status=FAILED)
    await persistence.visibility.upsert_runs([])
    assert await persistence.visibility.count_runs("ns-1", VisibilityFilter()) == 3
