"""FlowService's namespace calls: register, describe, list, update."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from tideflow.api.v1 import flow_service_pb2, namespace_pb2
from tideflow_server.frontend import validation
from tideflow_server.frontend.base import Frontend
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.rpc.errors import AlreadyExists

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_RETENTION_S = 7 * 24 * 3600


class Namespaces:
    _f: Frontend

    async def RegisterNamespace(
        self, request: flow_service_pb2.RegisterNamespaceRequest, context: Context
    ) -> flow_service_pb2.RegisterNamespaceResponse:
        record = records_pb2.NamespaceRecord()
        info = record.info
        info.name = request.namespace
        info.id = str(uuid.uuid4())
        info.state = namespace_pb2.NAMESPACE_STATE_REGISTERED
        info.description = request.description
        info.owner_email = request.owner_email
        info.data.update(request.data)
        record.config.CopyFrom(request.config)
        if not record.config.HasField("retention"):
            record.config.retention.FromSeconds(DEFAULT_RETENTION_S)
        record.create_time.GetCurrentTime()
        try:
            await self._f.manager.create_namespace(record)
        except store.AlreadyExists as e:
            raise AlreadyExists(
                f"namespace {request.namespace!r} already exists",
                reason="NAMESPACE_ALREADY_EXISTS",
            ) from e
        return flow_service_pb2.RegisterNamespaceResponse(info=info)

    async def DescribeNamespace(
        self, request: flow_service_pb2.DescribeNamespaceRequest, context: Context
    ) -> flow_service_pb2.DescribeNamespaceResponse:
        record = await self._f.namespace(request.namespace)
        return flow_service_pb2.DescribeNamespaceResponse(info=record.info, config=record.config)

    async def ListNamespaces(
        self, request: flow_service_pb2.ListNamespacesRequest, context: Context
    ) -> flow_service_pb2.ListNamespacesResponse:
        page = await self._f.manager.persistence.metadata.list_namespaces(
            page_size=validation.page_size_or_default(request.page_size, self._f.limits),
            page_token=request.next_page_token or None,
        )
        response = flow_service_pb2.ListNamespacesResponse(
            next_page_token=page.next_page_token or b""
        )
        for row in page.items:
            record = records_pb2.NamespaceRecord.FromString(row.data)
            response.namespaces.add(info=record.info, config=record.config)
        return response

    async def UpdateNamespace(
        self, request: flow_service_pb2.UpdateNamespaceRequest, context: Context
    ) -> flow_service_pb2.UpdateNamespaceResponse:
        record = await self._f.namespace(request.namespace)
        updated = records_pb2.NamespaceRecord()
        updated.CopyFrom(record)
        source = records_pb2.NamespaceRecord(info=request.info, config=request.config)
        request.update_mask.MergeMessage(source, updated, replace_repeated_field=True)
        updated.info.name, updated.info.id = record.info.name, record.info.id
        updated.notification_version = record.notification_version + 1
        await self._f.manager.update_namespace(updated)
        self._f.namespaces.forget(updated)
        return flow_service_pb2.UpdateNamespaceResponse(info=updated.info, config=updated.config)
