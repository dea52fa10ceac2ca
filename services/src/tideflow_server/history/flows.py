"""Registered flows as the engine runs them: loaded once per version and compiled."""

from __future__ import annotations

from tideflow.api.v1 import flow_pb2
from tideflow_server.history.interpreter.compiled import CompiledBlueprint
from tideflow_server.persistence import NotFound as StoreNotFound
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.rpc.errors import NotFound


class FlowCache:
    """Flow versions are immutable, so a compiled version is cached for good (bounded)."""

    def __init__(self, manager: PersistenceManager, *, max_entries: int = 1_000) -> None:
        self._manager = manager
        self._max_entries = max_entries
        self._compiled: dict[
            tuple[str, str, int], tuple[flow_pb2.FlowDefinition, CompiledBlueprint]
        ] = {}

    async def get(
        self, namespace_id: str, name: str, version: int
    ) -> tuple[flow_pb2.FlowDefinition, CompiledBlueprint]:
        """`version` 0 resolves to the latest version (and pins it)."""
        key = (namespace_id, name, version)
        found = self._compiled.get(key)
        if found is not None:
            return found
        try:
            flow = await self._manager.get_flow(namespace_id, name, version)
        except StoreNotFound as e:
            shown = f"{name}@{version}" if version else f"{name} (any version)"
            raise NotFound(f"flow {shown} is not registered", reason="FLOW_NOT_FOUND") from e
        # `version` 0 reads the latest definition each time (a newer one may have been
        # registered since), but compiles it only once.
        cached = self._compiled.get((namespace_id, name, flow.version))
        if cached is not None:
            return cached
        compiled = CompiledBlueprint.compile(flow.blueprint)
        if len(self._compiled) >= self._max_entries:
            self._compiled.pop(next(iter(self._compiled)))
        entry = (flow, compiled)
        self._compiled[(namespace_id, name, flow.version)] = entry
        return entry
