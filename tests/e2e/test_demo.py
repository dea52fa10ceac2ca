"""`python -m demo` end to end: it runs, reports every document, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted((ROOT / "demo" / "documents").glob("*.txt"))


def _alive(pid: int) -> bool:
    """Running (not a zombie) process with this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_mentioning(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_make_demo_the_readmes_first_command() -> None:
    assert len(DOCUMENTS) >= 6
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme.split("```sh", 1)[1].split("```", 1)[0]
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "--no-print-directory", "demo", f"PY={sys.executable}"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "150"},
    )
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert elapsed < 60, f"demo took {elapsed:.1f}s"
    for document in DOCUMENTS:
        assert document.name in output, document.name
    assert "Results" in output
    assert "Where to look next" in output
    assert "tidectl run list -n demo --address 127.0.0.1:" in output
    assert "tidectl run history" in output
    assert f"{len(DOCUMENTS)} runs, 0 failed" in output

    server = re.search(r"started tideflow-server pid (\d+) on \S+ \(db\s+(\S+)\)", output)
    assert server, output
    pids = [int(server[1])] + [int(p) for p in re.findall(r"started worker pid (\d+)", output)]
    assert len(pids) == 3
    assert "stopped server and workers" in output
    assert not [pid for pid in pids if _alive(pid)]
    assert not _processes_mentioning(server[2])
    assert not Path(server[2]).exists(), "the temporary database was not removed"
