"""`python -m demo.polyglot` end to end: one flow whose blocks run on the Python, Go,
TypeScript and model workers, each a process of its own; every run completes with each
language's answer and the model's prediction of its digit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted((ROOT / "demo" / "documents").glob("*.txt"))


def test_the_polyglot_demo_runs_every_document_on_every_language(
    go_worker: Path, node_worker: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "demo.polyglot"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"{len(DOCUMENTS)} runs completed on go, model, node, python workers" in out
    for document in DOCUMENTS:
        assert document.name in out
    assert "invoice-acme-2024-03" in out  # node.slugify@1's answer
    assert out.count("✓") == len(DOCUMENTS), "the model read every digit right"
