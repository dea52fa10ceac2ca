"""`python -m demo` end to end: it runs, reports every document and the path it took through
the flow (review skipped, answered, escalated or timed out; filed or compensated), and leaves
nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted((ROOT / "demo" / "documents").glob("*.txt"))
ESCALATED = "escalated to notify_reviewer, then"
PATHS = {
    "contract_consulting_agreement.txt": "auto -> 2 pages -> filed",
    "delivery_note_smudged.txt": f"{ESCALATED} timed out -> fallback_label -> 2 pages -> filed",
    "invoice_acme_2024-03.txt": "auto -> 1 page -> filed",
    "invoice_northwind_mismatch.txt": (
        "auto -> 1 page -> file failed -> compensated index by unindex, reserve by release"
    ),
    "letter_lease_renewal.txt": "auto -> 1 page -> filed",
    "meeting_notes.txt": f"{ESCALATED} reviewed by signal -> 1 page -> filed",
    "receipt_blue_bottle.txt": "auto -> 1 page -> filed",
    "scan_invoice_ocr.txt": "reviewed by signal -> 2 pages -> filed",
}


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
    assert sorted(PATHS) == [d.name for d in DOCUMENTS]
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
    lines = output.splitlines()
    paths = lines[next(i for i, line in enumerate(lines) if "Paths (from DescribeRun)" in line) :]
    for name, path in PATHS.items():
        assert any(name in line and f" {path} " in line for line in paths), (name, path)
    assert "Where to look next" in output
    hints = re.findall(r"^\s+(tidectl -n demo --address \S+ run .*)$", output, flags=re.M)
    assert len(hints) == 2, output
    for hint in hints:
        # As printed, with the (now stopped) server's address: the command parses, and only
        # the server is missing.
        argv = hint.split()
        tidectl = Path(sys.executable).with_name("tidectl")
        command = [str(tidectl), *argv[1:]]
        reply = subprocess.run(command, check=False, capture_output=True, text=True)
        assert "cannot reach the Tideflow server" in reply.stdout + reply.stderr, hint
    assert (
        f"{len(DOCUMENTS)} runs: {len(DOCUMENTS) - 1} completed, 1 failed and compensated, "
        "0 failed otherwise or unfinished"
    ) in output

    server = re.search(r"started tideflow-server pid (\d+) on \S+ \(db\s+(\S+)\)", output)
    assert server, output
    pids = [int(server[1])] + [int(p) for p in re.findall(r"started worker pid (\d+)", output)]
    assert len(pids) == 3
    assert "stopped server and workers" in output
    assert not [pid for pid in pids if _alive(pid)]
    assert not _processes_mentioning(server[2])
    assert not Path(server[2]).exists(), "the temporary database was not removed"
