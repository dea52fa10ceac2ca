"""`make proto-check`: generated code that no longer matches proto/ fails the build.

Runs the real script on a copy of the repository's proto tree and generated packages, so the
working tree is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COPIED = [
    "tools/protogen.py",
    "proto",
    "sdk_python/src/tideflow/api",
    "services/src/tideflow_server/internal",
]


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "tools" / "protogen.py"), "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_proto_check_fails_on_a_proto_edited_without_regeneration(tmp_path: Path) -> None:
    for relative in COPIED:
        source, target = REPO / relative, tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    assert _check(tmp_path).returncode == 0

    edited = tmp_path / "proto" / "tideflow" / "api" / "v1" / "task_queue.proto"
    edited.write_text(
        edited.read_text().replace(
            "  string sticky_task_queue = 5;\n",
            "  string sticky_task_queue = 5;\n  string note = 6;\n",
        )
    )
    stale = _check(tmp_path)
    assert stale.returncode == 1
    assert "task_queue_pb2.py" in stale.stdout + stale.stderr
