"""OperatorService: what the cluster is made of (its name and version, shards and owners,
members)."""

from __future__ import annotations

import time
from typing import Any

import grpc

from tideflow.api.v1 import operator_service_pb2, operator_service_pb2_grpc
from tideflow_server.config import Settings
from tideflow_server.frontend.base import Frontend
from tideflow_server.membership import Membership
from tideflow_server.persistence import errors as store
from tideflow_server.rpc.clients import HISTORY, shard_key

Context = grpc.aio.ServicerContext[Any, Any]
SERVER_VERSION = "0.1.0"


class OperatorHandler(operator_service_pb2_grpc.OperatorServiceServicer):
    def __init__(
        self, frontend: Frontend, *, membership: Membership, settings: Settings, shard_count: int
    ) -> None:
        self._f = frontend
        self._membership = membership
        self._settings = settings
        self._shard_count = shard_count

    async def GetClusterInfo(
        self, request: operator_service_pb2.GetClusterInfoRequest, context: Context
    ) -> operator_service_pb2.GetClusterInfoResponse:
        backend = self._f.manager.persistence.backend
        return operator_service_pb2.GetClusterInfoResponse(
            cluster_name=self._settings.cluster.name,
            server_version=SERVER_VERSION,
            history_shard_count=self._shard_count,
            persistence_backend=backend,
            visibility_backend=backend,
        )

    async def ListShards(
        self, request: operator_service_pb2.ListShardsRequest, context: Context
    ) -> operator_service_pb2.ListShardsResponse:
        response = operator_service_pb2.ListShardsResponse()
        for shard_id in range(1, self._shard_count + 1):
            owner = self._membership.owner(HISTORY, shard_key(shard_id))
            try:
                row = await self._f.manager.persistence.shards.get_shard(shard_id)
                range_id = row.range_id
            except store.NotFound:
                range_id = 0
            response.shards.add(
                shard_id=shard_id, owner_host=owner.host_id if owner else "", range_id=range_id
            )
        return response

    async def ListClusterMembers(
        self, request: operator_service_pb2.ListClusterMembersRequest, context: Context
    ) -> operator_service_pb2.ListClusterMembersResponse:
        rows = await self._f.manager.persistence.cluster.list_members(
            now_ms=int(time.time() * 1000), role=request.role or None
        )
        response = operator_service_pb2.ListClusterMembersResponse()
        for row in rows:
            member = response.members.add(
                role=row.role, host_id=row.host_id, rpc_address=row.rpc_address
            )
            member.session_start_time.FromMilliseconds(row.session_start_ms)
            member.last_heartbeat_time.FromMilliseconds(row.last_heartbeat_ms)
        return response
