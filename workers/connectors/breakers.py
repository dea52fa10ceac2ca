"""One circuit breaker per target host (purgatory): after `threshold` failures in a row the
host's calls fail fast for `recovery_s`, then one call tries it again (half-open)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from tideflow.errors import ApplicationError


class BreakerFailure(Exception):
    """Raised inside a breaker to count a call as failed (5xx, timeout, connection error)."""


class Breakers:
    def __init__(self, *, threshold: int, recovery_s: float) -> None:
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=threshold, default_ttl=recovery_s
        )
        self._hosts: set[str] = set()

    @asynccontextmanager
    async def guard(self, host: str) -> AsyncIterator[None]:
        """Run the body under `host`'s breaker: it fails fast with a retryable `CircuitOpen`
        while the breaker is open; a BreakerFailure raised in the body counts as a failure."""
        self._hosts.add(host)
        breaker = await self._factory.get_breaker(host)
        try:
            async with breaker:
                yield
        except OpenedState:
            raise ApplicationError(
                f"circuit open for {host}: recent calls failed; failing fast",
                type="CircuitOpen",
            ) from None

    async def states(self) -> dict[str, str]:
        """Each host's breaker state: closed, opened or half-opened."""
        states = {}
        for host in sorted(self._hosts):
            breaker = await self._factory.get_breaker(host)
            states[host] = str(breaker.context.state)
        return states
