"""The connector worker's health endpoint: GET /health shows each host's circuit breaker."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workers.connectors.breakers import Breakers


def app(breakers: Breakers) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        states = await breakers.states()
        degraded = any(state != "closed" for state in states.values())
        return JSONResponse({"status": "degraded" if degraded else "ok", "breakers": states})

    return Starlette(routes=[Route("/health", health)])
