"""The example workers of other languages, built from the committed sources once per test
session (the builds are incremental: a no-op when nothing changed). A toolchain that is
missing or a build that fails fails the tests that need it, with the tool's output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "workers" / "go"
NODE_DIR = ROOT / "workers" / "node"
GO_BINARY = GO_DIR / "bin" / "tideflow-go-worker"
NODE_PROGRAM = NODE_DIR / "dist" / "example.js"
BUILD_TIMEOUT_S = 600.0


def _build(argv: list[str], cwd: Path) -> None:
    """Run one build step; a failure fails the test that needed it, with the tool's output."""
    done = subprocess.run(
        argv, check=False, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed in {cwd}:\n{done.stdout}\n{done.stderr}")


def build_go_worker() -> Path:
    """The Go example worker, built (go build is incremental: a no-op when nothing changed)."""
    if shutil.which("go") is None:
        pytest.fail("the Go toolchain (go) is not on PATH")
    _build(["go", "build", "-o", str(GO_BINARY), "./cmd/tideflow-go-worker"], GO_DIR)
    return GO_BINARY


def build_node_worker() -> Path:
    """The TypeScript example worker, compiled (dependencies from package-lock.json)."""
    if shutil.which("npm") is None:
        pytest.fail("Node.js (npm) is not on PATH")
    if not (NODE_DIR / "node_modules").exists():
        _build(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], NODE_DIR)
    _build([str(NODE_DIR / "node_modules" / ".bin" / "tsc"), "-p", "."], NODE_DIR)
    return NODE_PROGRAM
