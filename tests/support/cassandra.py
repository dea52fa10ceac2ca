"""The single-node Cassandra of deploy/cassandra/cassandra.py, for tests.

The launcher is a standalone script (standard library only, fetches its jars with Maven on
first use), so it is loaded from its file rather than imported from a package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

LAUNCHER = Path(__file__).resolve().parents[2] / "deploy" / "cassandra" / "cassandra.py"


def launcher() -> ModuleType:
    name = "tideflow_cassandra_launcher"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
