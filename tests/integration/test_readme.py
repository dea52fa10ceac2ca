"""The README's blueprint example is one the server accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.cluster import Cluster
from tests.support.flows import Client

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_readme_blueprint_registers(cluster: Cluster, client: Client) -> None:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no blueprint example"
    registered = await client.register(json.loads(blocks[0]))
    assert registered.flow.name == "intake"
    assert [b.id for b in registered.flow.blueprint.blocks] == ["classify", "ocr", "extract"]
