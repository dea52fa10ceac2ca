"""The block kinds' integration tests share one cluster per backend for the whole package:
each module would otherwise start its own (about 5 s on Cassandra), and the tests already use
names of their own (flows, run ids, queues), so nothing one leaves behind meets another."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import CLUSTER_BACKENDS, make_cluster
from tests.support.cluster import Cluster


@pytest.fixture(scope="package", params=CLUSTER_BACKENDS)
async def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp(f"blueprints-{request.param}")
    started = make_cluster(request.param, root, request)
    async with started.running():
        yield started
