"""`publish@1`: publish a Tideflow event (to this or another namespace), once per block."""

from __future__ import annotations

import uuid
from typing import Any

from tideflow.client import Client
from tideflow.errors import ApplicationError
from tideflow.worker import context


class PublishBlock:
    def __init__(self, address: str) -> None:
        self._address = address
        self._clients: dict[str, Client] = {}

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def __call__(self, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value, dict) or not value.get("event_type"):
            raise ApplicationError(
                "input.event_type is required", type="BadInput", non_retryable=True
            )
        info = context().info
        namespace = str(value.get("namespace") or "default")
        client = self._clients.get(namespace)
        if client is None:
            client = await Client.connect(self._address, namespace=namespace)
            self._clients[namespace] = client
        # The id is the block's, the same on every attempt: a retried publish is delivered
        # once (the server keeps the id and each run takes an event id once). A name-based
        # UUID keeps it within the id length limit whatever the run and block ids are.
        event_id = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{info.run_id}/{info.execution_id}/{info.block_id}")
        )
        published = await client.publish_event(
            str(value["event_type"]),
            value.get("payload"),
            correlation_key=str(value.get("correlation_key", "")),
            event_id=event_id,
        )
        return {"event_id": published, "namespace": namespace}
