"""The trigger's HTTP app: POST <route path> with a JSON body and a delivery id answers 202
with what it started or published; every refusal is a 4xx with the reason, and starts
nothing."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as HttpRoute

from tideflow.blueprint.language.cel import Activation, CelEvaluationError
from tideflow.client import Client
from tideflow.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RPCError,
    UnavailableError,
)
from workers.trigger.routes import Route, RouteTable, authenticated

logger = logging.getLogger("tideflow.trigger")

DELIVERY_HEADER = "x-tideflow-delivery"
MAX_DELIVERY_ID = 200
MAX_BODY_BYTES = 1024 * 1024


class Refused(Exception):
    """A request the trigger answers with a 4xx or 5xx and the reason."""

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.body = {"error": reason, **extra}
        self.headers: dict[str, str] = {}


class Clients:
    """One tideflow Client per namespace, opened on first use."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._open: dict[str, Client] = {}

    async def get(self, namespace: str) -> Client:
        client = self._open.get(namespace)
        if client is None:
            client = await Client.connect(self._address, namespace=namespace, timeout_s=10)
            self._open[namespace] = client
        return client

    async def close(self) -> None:
        for client in self._open.values():
            await client.close()


def _evaluate(route: Route, field: str, activation: Activation) -> Any:
    try:
        return route.program(field).evaluate(activation)
    except CelEvaluationError as e:
        raise Refused(422, f"route {route.path}: {field}: {e}") from None


def _engine_error(error: RPCError) -> Refused:
    if isinstance(error, InvalidArgumentError | NotFoundError):
        violations = [{"field": v.field, "description": v.description} for v in error.violations]
        return Refused(422, f"the engine refused it: {error.message}", violations=violations)
    if isinstance(error, ResourceExhaustedError | UnavailableError | DeadlineExceededError):
        refused = Refused(429 if isinstance(error, ResourceExhaustedError) else 503, str(error))
        delay = error.retry_delay.total_seconds() if error.retry_delay else 1.0
        refused.headers["Retry-After"] = str(max(1, round(delay)))
        return refused
    return Refused(502, f"the engine failed: {error}")


async def _act(
    route: Route, clients: Clients, delivery: str, activation: Activation
) -> dict[str, Any]:
    client = await clients.get(route.namespace)
    if route.action == "publish":
        event_id = await client.publish_event(
            route.event_type,
            _evaluate(route, "payload", activation),
            correlation_key=str(_evaluate(route, "correlation_key", activation)),
            event_id=delivery,
        )
        return {"event_id": event_id}
    run_id = _evaluate(route, "run_id", activation)
    if not isinstance(run_id, str) or not run_id:
        raise Refused(422, f"route {route.path}: run_id gave {run_id!r}, not a non-empty string")
    handle = await client.signal_with_start(
        route.flow_name,
        _evaluate(route, "input", activation),
        version=route.flow_version,
        signal=route.signal,
        signal_input=_evaluate(route, "signal_input", activation),
        run_id=run_id,
        task_queue=route.task_queue or None,
        # The delivery id is the engine's idempotency key: a redelivery neither starts a second
        # execution nor signals the run twice.
        request_id=delivery,
    )
    return {"run_id": run_id, "execution_id": handle.execution_id, "started": handle.started}


def build(table: RouteTable, clients: Clients, secrets: dict[str, bytes]) -> Starlette:
    by_path = {route.path: route for route in table.routes}

    async def hook(request: Request) -> JSONResponse:
        try:
            route = by_path[request.url.path]
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                raise Refused(413, f"body over {MAX_BODY_BYTES} bytes")
            headers = {k.lower(): v for k, v in request.headers.items()}
            if not route.allow_unauthenticated and not authenticated(
                route.auth, body, headers, secrets
            ):
                raise Refused(401, "missing or wrong signature or API key")
            delivery = headers.get(DELIVERY_HEADER, "")
            if not delivery or len(delivery) > MAX_DELIVERY_ID or not delivery.isprintable():
                raise Refused(
                    400,
                    f"header X-Tideflow-Delivery is required: a printable id of at most "
                    f"{MAX_DELIVERY_ID} characters, the same on every redelivery",
                )
            try:
                parsed = json.loads(body)
            except ValueError as e:
                raise Refused(400, f"body is not JSON: {e}") from None
            activation = Activation({"body": parsed, "headers": headers})
            try:
                answer = await _act(route, clients, delivery, activation)
            except RPCError as e:
                raise _engine_error(e) from None
            logger.info("%s delivery %s: %s", route.path, delivery, answer)
            return JSONResponse(answer, status_code=202)
        except Refused as refused:
            return JSONResponse(refused.body, status_code=refused.status, headers=refused.headers)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "routes": sorted(by_path)})

    async def unknown(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"no route for {request.url.path}"}, status_code=404)

    return Starlette(
        routes=[
            HttpRoute("/healthz", healthz, methods=["GET"]),
            *(HttpRoute(path, hook, methods=["POST"]) for path in by_path),
        ],
        exception_handlers={404: unknown},
    )
