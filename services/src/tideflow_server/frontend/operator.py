"""OperatorService: what the cluster is made of (its name and version, shards and owners,
members), and its API keys."""

from __future__ import annotations

import time
from typing import Any

import grpc

from tideflow.api.v1 import operator_service_pb2, operator_service_pb2_grpc
from tideflow_server.auth import CLUSTER, Principal, Role
from tideflow_server.config import Settings
from tideflow_server.frontend.base import Frontend
from tideflow_server.membership import Membership
from tideflow_server.persistence import errors as store
from tideflow_server.rpc.clients import HISTORY, shard_key
from tideflow_server.rpc.interceptors import current_call

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

    # -- API keys ---------------------------------------------------------------------------

    async def _key_namespace(self, namespace: str) -> None:
        if namespace != CLUSTER:
            await self._f.namespace(namespace)  # NOT_FOUND for one not registered

    async def CreateApiKey(
        self, request: operator_service_pb2.CreateApiKeyRequest, context: Context
    ) -> operator_service_pb2.CreateApiKeyResponse:
        await self._key_namespace(request.namespace)
        call = current_call()
        caller = call.principal if call is not None else None
        info, key = await self._f.api_keys.create(
            namespace=request.namespace,
            role=Role(request.role),
            task_queues=list(request.task_queues),
            description=request.description,
            created_by=caller.key_id if isinstance(caller, Principal) else "",
        )
        return operator_service_pb2.CreateApiKeyResponse(info=info, key=key)

    async def ListApiKeys(
        self, request: operator_service_pb2.ListApiKeysRequest, context: Context
    ) -> operator_service_pb2.ListApiKeysResponse:
        await self._key_namespace(request.namespace)
        keys = await self._f.api_keys.list(request.namespace)
        return operator_service_pb2.ListApiKeysResponse(keys=keys)

    async def RevokeApiKey(
        self, request: operator_service_pb2.RevokeApiKeyRequest, context: Context
    ) -> operator_service_pb2.RevokeApiKeyResponse:
        info = await self._f.api_keys.revoke(request.namespace, request.key_id)
        return operator_service_pb2.RevokeApiKeyResponse(info=info)
