"""Clients that start and watch runs: `Client` (asyncio) and `SyncClient` (blocking)."""

from tideflow.client._client import Client, StartOptions
from tideflow.client._handle import RunHandle
from tideflow.client._sync import SyncClient, SyncRunHandle

__all__ = ["Client", "RunHandle", "StartOptions", "SyncClient", "SyncRunHandle"]
