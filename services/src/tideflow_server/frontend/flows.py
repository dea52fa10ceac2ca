"""FlowService's flow calls: register a blueprint as a flow version, describe, list."""

from __future__ import annotations

from typing import Any

import grpc

from tideflow.api.v1 import blueprint_pb2, flow_pb2, flow_service_pb2
from tideflow_server.frontend import validation
from tideflow_server.frontend.base import Frontend
from tideflow_server.history.interpreter import compile_blueprint
from tideflow_server.persistence import errors as store
from tideflow_server.rpc.errors import AlreadyExists, NotFound

Context = grpc.aio.ServicerContext[Any, Any]
REGISTER_ATTEMPTS = 3
"""Registrations asking for the next version that may lose the race to another one."""


class Flows:
    _f: Frontend

    async def RegisterFlow(
        self, request: flow_service_pb2.RegisterFlowRequest, context: Context
    ) -> flow_service_pb2.RegisterFlowResponse:
        record = await self._f.namespace(request.namespace)
        manager = self._f.manager
        for _ in range(REGISTER_ATTEMPTS):
            blueprint = blueprint_pb2.Blueprint()
            blueprint.CopyFrom(request.blueprint)
            if not blueprint.version:
                # Version 0 asks for the next version of the flow.
                try:
                    latest = await manager.get_flow(record.info.id, blueprint.name)
                    blueprint.version = latest.version + 1
                except store.NotFound:
                    blueprint.version = 1
            # Every error, with its path.
            compile_blueprint(blueprint, limits=self._f.blueprint_limits)
            flow = flow_pb2.FlowDefinition(
                namespace=request.namespace,
                name=blueprint.name,
                version=blueprint.version,
                identity=request.identity,
                blueprint=blueprint,
            )
            flow.create_time.GetCurrentTime()
            try:
                await manager.create_flow(record.info.id, flow)
            except store.AlreadyExists as e:
                if not request.blueprint.version:
                    continue  # another registration took that version: take the next
                existing = await manager.get_flow(record.info.id, flow.name, flow.version)
                if existing.blueprint == flow.blueprint:
                    return flow_service_pb2.RegisterFlowResponse(flow=existing, created=False)
                raise AlreadyExists(
                    f"flow {flow.name}@{flow.version} is registered with a different "
                    "blueprint; flows are immutable, register a new version",
                    reason="FLOW_VERSION_EXISTS",
                ) from e
            return flow_service_pb2.RegisterFlowResponse(flow=flow, created=True)
        raise AlreadyExists(f"flow {request.blueprint.name!r} is being registered concurrently")

    async def DescribeFlow(
        self, request: flow_service_pb2.DescribeFlowRequest, context: Context
    ) -> flow_service_pb2.DescribeFlowResponse:
        record = await self._f.namespace(request.namespace)
        try:
            flow = await self._f.manager.get_flow(record.info.id, request.name, request.version)
        except store.NotFound as e:
            shown = f"{request.name}@{request.version}" if request.version else request.name
            raise NotFound(f"flow {shown} is not registered", reason="FLOW_NOT_FOUND") from e
        return flow_service_pb2.DescribeFlowResponse(flow=flow)

    async def ListFlows(
        self, request: flow_service_pb2.ListFlowsRequest, context: Context
    ) -> flow_service_pb2.ListFlowsResponse:
        record = await self._f.namespace(request.namespace)
        page = await self._f.manager.persistence.metadata.list_flows(
            record.info.id,
            name=request.name or None,
            page_size=validation.page_size_or_default(request.page_size, self._f.limits),
            page_token=request.next_page_token or None,
        )
        response = flow_service_pb2.ListFlowsResponse(next_page_token=page.next_page_token or b"")
        for row in page.items:
            response.flows.append(flow_pb2.FlowDefinition.FromString(row.data))
        return response
