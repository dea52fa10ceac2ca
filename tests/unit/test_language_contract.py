"""The blueprint language is part of the contract between the SDK and the server: the server
uses only its public modules and pins the SDK version that carries it."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "services" / "src" / "tideflow_server"


def _private_sdk_imports(path: Path) -> list[str]:
    """`tideflow.<...>._x` modules (or names from them) that `path` imports."""
    private = re.compile(r"(^|\.)_[a-z]")
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        found += [m for m in modules if m.split(".")[0] == "tideflow" and private.search(m[9:])]
    return found


def test_the_server_imports_no_private_sdk_module() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in SERVER.rglob("*.py")
        if "internal" not in path.parts and (found := _private_sdk_imports(path))
    }
    assert offenders == {}


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from tideflow.blueprint._policy import x\nimport tideflow.client._client\n")
    assert _private_sdk_imports(module) == [
        "tideflow.blueprint._policy",
        "tideflow.blueprint._policy.x",
        "tideflow.client._client",
    ]


def test_the_server_pins_the_sdk_version_exactly() -> None:
    sdk = tomllib.loads((ROOT / "sdk_python" / "pyproject.toml").read_text())["project"]
    server = tomllib.loads((ROOT / "services" / "pyproject.toml").read_text())["project"]
    pins = [d for d in server["dependencies"] if re.match(r"tideflow\b(?!-)", d)]
    assert pins == [f"tideflow=={sdk['version']}"]
