"""Namespaces and flow definitions."""

from __future__ import annotations

import pytest

from tideflow_server.persistence import AlreadyExists, NotFound
from tideflow_server.persistence.records import FlowRow, NamespaceRow
from tideflow_server.persistence.sql import SqlPersistence


async def test_namespace_names_and_ids_are_unique(persistence: SqlPersistence) -> None:
    docs = NamespaceRow(id="id-docs", name="docs", data=b"v1")
    await persistence.metadata.create_namespace(docs)
    with pytest.raises(AlreadyExists):
        await persistence.metadata.create_namespace(NamespaceRow(id="id-2", name="docs", data=b""))
    with pytest.raises(AlreadyExists):
        await persistence.metadata.create_namespace(NamespaceRow(id="id-docs", name="x", data=b""))
    assert await persistence.metadata.get_namespace_by_name("docs") == docs
    assert await persistence.metadata.get_namespace_by_id("id-docs") == docs
    with pytest.raises(NotFound):
        await persistence.metadata.get_namespace_by_name("nope")

    updated = NamespaceRow(id="id-docs", name="docs", data=b"v2")
    await persistence.metadata.update_namespace(updated)
    assert await persistence.metadata.get_namespace_by_id("id-docs") == updated
    with pytest.raises(NotFound):
        await persistence.metadata.update_namespace(NamespaceRow(id="ghost", name="g", data=b""))


async def test_namespaces_list_in_pages(persistence: SqlPersistence) -> None:
    names = [f"team-{i:02d}" for i in range(7)]
    for name in reversed(names):
        await persistence.metadata.create_namespace(
            NamespaceRow(id=f"id-{name}", name=name, data=b"")
        )
    listed: list[str] = []
    token = None
    while True:
        page = await persistence.metadata.list_namespaces(page_size=3, page_token=token)
        listed += [n.name for n in page.items]
        if page.next_page_token is None:
            break
        token = page.next_page_token
    assert listed == names


async def test_flow_versions_are_immutable_and_listed(persistence: SqlPersistence) -> None:
    md = persistence.metadata
    for name, version in [("ocr", 1), ("ocr", 2), ("classify", 1), ("ocr", 10)]:
        await md.create_flow(
            FlowRow(
                namespace_id="ns-1",
                name=name,
                version=version,
                create_time_ms=version,
                data=f"{name}@{version}".encode(),
            )
        )
    with pytest.raises(AlreadyExists):
        await md.create_flow(
            FlowRow(namespace_id="ns-1", name="ocr", version=2, create_time_ms=0, data=b"changed")
        )
    assert (await md.get_flow("ns-1", "ocr", 2)).data == b"ocr@2"
    assert (await md.get_latest_flow("ns-1", "ocr")).version == 10
    with pytest.raises(NotFound):
        await md.get_flow("ns-2", "ocr", 2)
    with pytest.raises(NotFound):
        await md.get_latest_flow("ns-1", "missing")

    first = await md.list_flows("ns-1", page_size=2)
    assert [(f.name, f.version) for f in first.items] == [("classify", 1), ("ocr", 1)]
    assert first.next_page_token is not None
    rest = await md.list_flows("ns-1", page_size=5, page_token=first.next_page_token)
    assert [(f.name, f.version) for f in rest.items] == [("ocr", 2), ("ocr", 10)]
    assert rest.next_page_token is None
    only_ocr = await md.list_flows("ns-1", name="ocr", page_size=10)
    assert [f.version for f in only_ocr.items] == [1, 2, 10]
