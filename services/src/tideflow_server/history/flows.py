"""Registered flows as the engine runs them: loaded once per version and compiled."""

from __future__ import annotations

from tideflow.api.v1 import flow_pb2
from tideflow_server.history.interpreter import CompiledBlueprint, Limits, compile_blueprint
from tideflow_server.persistence import NotFound as StoreNotFound
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.rpc.errors import NotFound


class FlowCache:
    """Flow versions are immutable, so a compiled version is cached for good (bounded).

    Which version is the latest can change, so it is only a hint here (`latest_known`): a
    start that uses it has the store check it with the create (`FlowCheck`), and reads the
    latest again if a newer version was registered meanwhile."""

    def __init__(
        self, manager: PersistenceManager, *, max_entries: int = 1_000, limits: Limits | None = None
    ) -> None:
        """`limits`: the `blueprint` settings runs go by (in-line map items, map concurrency)."""
        self._manager = manager
        self._limits = limits
        self._max_entries = max_entries
        self._compiled: dict[
            tuple[str, str, int], tuple[flow_pb2.FlowDefinition, CompiledBlueprint]
        ] = {}
        self._latest: dict[tuple[str, str], int] = {}
        self._entries: dict[
            tuple[str, str, int, str], tuple[flow_pb2.FlowDefinition, CompiledBlueprint]
        ] = {}

    def latest_known(
        self, namespace_id: str, name: str
    ) -> tuple[flow_pb2.FlowDefinition, CompiledBlueprint] | None:
        """The version the last read of the latest found, if still cached; it may have been
        superseded since."""
        version = self._latest.get((namespace_id, name))
        return None if version is None else self._compiled.get((namespace_id, name, version))

    def forget_latest(self, namespace_id: str, name: str) -> None:
        self._latest.pop((namespace_id, name), None)

    async def get(
        self, namespace_id: str, name: str, version: int, entry: str = ""
    ) -> tuple[flow_pb2.FlowDefinition, CompiledBlueprint]:
        """`version` 0 resolves to the latest version (and pins it). `entry`: a map item's
        child run (`RunExecutionInfo.parent.entry`) runs the block list of the map at that
        path ("/"-separated through maps in entered runs): `CompiledBlueprint.entered`."""
        if entry:
            return await self._entered(namespace_id, name, version, entry)
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
        if version == 0:
            if len(self._latest) >= self._max_entries:
                self._latest.pop(next(iter(self._latest)))
            self._latest[(namespace_id, name)] = flow.version
        cached = self._compiled.get((namespace_id, name, flow.version))
        if cached is not None:
            return cached
        # Registration checked it; later, stricter checks must not stop it from running.
        compiled = compile_blueprint(flow.blueprint, stored=True, limits=self._limits)
        if len(self._compiled) >= self._max_entries:
            self._compiled.pop(next(iter(self._compiled)))
        found = (flow, compiled)
        self._compiled[(namespace_id, name, flow.version)] = found
        return found

    async def _entered(
        self, namespace_id: str, name: str, version: int, entry: str
    ) -> tuple[flow_pb2.FlowDefinition, CompiledBlueprint]:
        key = (namespace_id, name, version, entry)
        found = self._entries.get(key)
        if found is not None:
            return found
        flow, compiled = await self.get(namespace_id, name, version)
        try:
            for path in entry.split("/"):
                compiled = compiled.entered(path)
        except KeyError as e:
            raise NotFound(
                f"flow {name}@{version} has no map block at {entry!r}", reason="FLOW_NOT_FOUND"
            ) from e
        if len(self._entries) >= self._max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (flow, compiled)
        return flow, compiled
