"""Tideflow Python SDK: a client for runs and a worker for blocks, over the gRPC API."""

from tideflow.client import Client, RunHandle, SyncClient
from tideflow.worker import Worker, block

__all__ = ["Client", "RunHandle", "SyncClient", "Worker", "block"]
