"""The local multi-process cluster lives in deploy/local/; re-exported for the tests, with a
one-process SQLite cluster for modules that need settings of their own."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from deploy.local.cluster import SERVER, Cluster, ServerProcess
from tideflow.client import Client
from tideflow.errors import AlreadyExistsError

__all__ = [
    "SERVER",
    "Cluster",
    "ServerProcess",
    "admin_key",
    "running_sqlite_cluster",
    "sdk_client",
]


def admin_key(cluster: Cluster) -> str:
    """A cluster admin API key, made as an operator makes the first one: with
    `tideflow-server auth create-key` on the cluster's config, straight into its database."""
    made = subprocess.run(
        [SERVER, "auth", "create-key", "--config", str(cluster.config), "--role", "admin"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return made.stdout.strip()


@contextlib.asynccontextmanager
async def running_sqlite_cluster(
    root: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    persistence: Mapping[str, Any] | None = None,
) -> AsyncIterator[Cluster]:
    """A started one-process cluster on a fresh SQLite database under `root` (more
    `persistence` settings layered over it), killed on exit."""
    cluster = Cluster(
        root,
        {"backend": "sqlite", "sqlite": {"path": str(root / "t.db")}, **(persistence or {})},
        settings=settings,
    )
    cluster.schema_setup()
    async with cluster.running():
        yield cluster


@contextlib.asynccontextmanager
async def sdk_client(cluster: Cluster, namespace: str = "default") -> AsyncIterator[Client]:
    """The SDK's Client on `cluster`'s frontend, `namespace` registered if it was not."""
    async with await Client.connect(cluster.frontend) as admin:
        with contextlib.suppress(AlreadyExistsError):
            await admin.register_namespace(namespace)
    async with await Client.connect(cluster.frontend, namespace=namespace) as client:
        yield client
