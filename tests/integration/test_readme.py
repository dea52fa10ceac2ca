"""The README's blueprint example is one the server accepts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import uuid
from pathlib import Path

from tests.support.cluster import Cluster
from tests.support.flows import Client
from tideflow import Client as SdkClient
from tideflow.api.v1 import flow_service_pb2
from tideflow.errors import AlreadyExistsError

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_readme_blueprint_registers(cluster: Cluster, client: Client) -> None:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no blueprint example"
    registered = await client.register(json.loads(blocks[0]))
    assert registered.flow.name == "intake"
    assert [b.id for b in registered.flow.blueprint.blocks] == ["classify", "ocr", "extract"]


async def test_readme_sdk_example_runs(cluster: Cluster) -> None:
    """The Python example runs as written, pointed at this cluster's frontend."""

    async with await SdkClient.connect(cluster.frontend) as client:
        with contextlib.suppress(AlreadyExistsError):
            await client.register_namespace("default")
    examples = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert examples, "README has no SDK example"
    script = examples[0].replace("127.0.0.1:7233", cluster.frontend)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert out.decode().strip() == "{'label': 'invoice'}"


async def test_a_built_blueprint_registers_and_runs(cluster: Cluster, client: Client) -> None:
    """A blueprint from the SDK builder passes the server's validation and runs."""
    from datetime import timedelta  # noqa: PLC0415

    from tests.support.flows import BlockWorker, echo, value  # noqa: PLC0415
    from tideflow.blueprint import Blueprint  # noqa: PLC0415

    queue = f"built-{uuid.uuid4().hex[:6]}"
    bp = Blueprint(
        f"built_{uuid.uuid4().hex[:6]}",
        version=1,
        task_queue=queue,
        start_to_close=timedelta(seconds=10),
    )
    first = bp.external("first", block="echo@1", input="${input}")
    bp.external("second", block="echo@1", needs=[first], input="${blocks.first.output.n + 1}")
    bp.output("${blocks.second.output}")
    registered = await client.stub.RegisterFlow(
        flow_service_pb2.RegisterFlowRequest(namespace=client.namespace, blueprint=bp.build()),
        timeout=10,
    )
    assert registered.created
    async with BlockWorker(cluster.frontend, queue, {"echo@1": echo}):
        run_id, _ = await client.start(registered.flow.name, {"n": 41})
        closed = await client.close_event(run_id)
    assert value(closed.run_completed_event_attributes.result) == 42
