"""Namespace lookups shared by the roles, cached briefly (namespaces change rarely)."""

from __future__ import annotations

import time

from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import NotFound as StoreNotFound
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.rpc.errors import NotFound


def tighter(own: int, server: int) -> int:
    """A namespace's own limit (a `NamespaceConfig.limits` field, 0 = none) under the server's
    limit: the smaller. A namespace can only tighten a server limit."""
    return min(own, server) if own else server


class NamespaceCache:
    def __init__(self, manager: PersistenceManager, *, ttl_s: float = 10.0) -> None:
        self._manager = manager
        self._ttl_s = ttl_s
        self._by_id: dict[str, tuple[float, records_pb2.NamespaceRecord]] = {}
        self._by_name: dict[str, tuple[float, records_pb2.NamespaceRecord]] = {}

    def _remember(self, record: records_pb2.NamespaceRecord) -> records_pb2.NamespaceRecord:
        expires = time.monotonic() + self._ttl_s
        self._by_id[record.info.id] = (expires, record)
        self._by_name[record.info.name] = (expires, record)
        return record

    def forget(self, record: records_pb2.NamespaceRecord) -> None:
        self._by_id.pop(record.info.id, None)
        self._by_name.pop(record.info.name, None)

    async def by_name(self, name: str) -> records_pb2.NamespaceRecord:
        cached = self._by_name.get(name)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            return self._remember(await self._manager.get_namespace(name=name))
        except StoreNotFound as e:
            raise NotFound(
                f"namespace {name!r} does not exist",
                reason="NAMESPACE_NOT_FOUND",
                metadata={"namespace": name},
            ) from e

    def cached_name(self, namespace_id: str) -> str:
        """The namespace's name if this cache holds it (whatever its age), else its id: for
        metrics labels, off the request path's awaits."""
        cached = self._by_id.get(namespace_id)
        return cached[1].info.name if cached else namespace_id

    async def by_id(self, namespace_id: str) -> records_pb2.NamespaceRecord:
        cached = self._by_id.get(namespace_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            return self._remember(await self._manager.get_namespace(namespace_id=namespace_id))
        except StoreNotFound as e:
            raise NotFound(
                f"namespace id {namespace_id!r} does not exist", reason="NAMESPACE_NOT_FOUND"
            ) from e
