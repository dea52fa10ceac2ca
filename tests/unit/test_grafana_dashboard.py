"""The Grafana dashboard in deploy/ reads only metrics Tideflow exports, as
docs/observability.md lists them, and every documented metric has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tideflow.json"
DOC = ROOT / "docs" / "observability.md"
_SUFFIXES = ("_bucket", "_count", "_sum")


def _documented() -> set[str]:
    """Prometheus names from the metrics table: `otel.name` (`prom_name...`) or a bare name."""
    names: set[str] = set()
    for row in re.findall(r"^\| `([a-z_.]+)`(?: \(`([a-z_.]+)`\))?", DOC.read_text(), re.M):
        otel, prom = row
        base = otel.replace(".", "_")
        if prom.startswith("..."):
            prom = base + prom[3:]
        names.add(prom or base)
    return names


def _queried(documented: set[str]) -> set[str]:
    """Metric names the panels query (label names left out), each as documented: a histogram's
    `_bucket`/`_count`/`_sum` series count as the histogram."""
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"by \([^)]*\)|\{[^}]*\}", "", target["expr"])
            for found in re.findall(r"\b((?:rpc|tideflow)_[a-z_]+)", expr):
                base = next((found.removesuffix(s) for s in _SUFFIXES if found.endswith(s)), found)
                names.add(found if found in documented or base not in documented else base)
    return names


def test_the_dashboard_reads_only_documented_metrics_and_covers_them_all() -> None:
    documented = _documented()
    queried = _queried(documented)
    assert documented, "no metrics table found in docs/observability.md"
    assert queried <= documented, queried - documented
    assert documented <= queried, documented - queried
