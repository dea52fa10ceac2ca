"""Generate the Python stubs of proto/ and check that the committed ones are current.

    python tools/protogen.py generate   # rewrite the generated packages
    python tools/protogen.py check      # exit 1 if they differ from what proto/ generates

protoc runs once over every .proto file, in sorted order, into a temporary directory: message
modules (``_pb2.py``), gRPC stubs (``_pb2_grpc.py``) and mypy-protobuf type stubs (``.pyi``).
The output is then split by package: ``tideflow/api`` goes to the SDK distribution and
``tideflow_server/internal`` to the server distribution. Those two directories belong to this
script; ``generate`` replaces them wholesale, so stale modules disappear.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"

# Empty __init__.py files are written into these generated package directories. The top-level
# packages (tideflow/, tideflow_server/) are hand-written and not touched.
GENERATED_PACKAGES = (
    "tideflow/api",
    "tideflow/api/v1",
    "tideflow_server/internal",
    "tideflow_server/internal/v1",
)

# Build artifacts that importing the generated modules leaves behind; never compared.
IGNORED_NAMES = frozenset({"__pycache__"})
IGNORED_SUFFIXES = (".pyc",)

# A service declaration at the start of a line; files without one get no _pb2_grpc modules.
SERVICE_DECLARATION = re.compile(r"^\s*service\s+\w+", re.MULTILINE)

# How many lines of unified diff `check` prints per stale file.
DIFF_LINES_PER_FILE = 40


@dataclass(frozen=True)
class Target:
    """A generated directory: where protoc puts it, and where it is committed."""

    relative: str
    destination: Path


TARGETS = (
    Target("tideflow/api", REPO_ROOT / "sdk_python" / "src" / "tideflow" / "api"),
    Target(
        "tideflow_server/internal", REPO_ROOT / "services" / "src" / "tideflow_server" / "internal"
    ),
)


def proto_files() -> list[str]:
    """Every .proto under proto/, relative to it, in sorted order for deterministic output."""
    return sorted(path.relative_to(PROTO_ROOT).as_posix() for path in PROTO_ROOT.rglob("*.proto"))


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to the running interpreter (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise SystemExit(f"protogen: protoc plugin {path} not found; run `make setup`")
    return str(path)


def run_protoc(out_dir: Path) -> None:
    """Generate every module into out_dir, laid out by Python package."""
    files = proto_files()
    if not files:
        raise SystemExit(f"protogen: no .proto files under {PROTO_ROOT}")
    well_known = resources.files("grpc_tools").joinpath("_proto")
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *files,
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"protogen: protoc failed with status {status}")
    # The gRPC plugins write a module for every file; drop the empty ones of message-only files.
    for name in files:
        if not SERVICE_DECLARATION.search((PROTO_ROOT / name).read_text(encoding="utf-8")):
            stem = out_dir / name.removesuffix(".proto")
            for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
                stem.with_name(stem.name + suffix).unlink()
    for package in GENERATED_PACKAGES:
        package_dir = out_dir / package
        package_dir.mkdir(parents=True, exist_ok=True)
        (package_dir / "__init__.py").write_bytes(b"")
    unexpected = sorted(
        entry.relative_to(out_dir).as_posix()
        for entry in out_dir.rglob("*")
        if entry.is_file()
        and not any(
            entry.relative_to(out_dir).as_posix().startswith(t.relative + "/") for t in TARGETS
        )
    )
    if unexpected:
        raise SystemExit(f"protogen: output outside the generated packages: {unexpected}")


def _is_ignored(relative: Path) -> bool:
    return any(part in IGNORED_NAMES for part in relative.parts) or relative.name.endswith(
        IGNORED_SUFFIXES
    )


def list_files(root: Path) -> dict[str, Path]:
    """Files under root keyed by their posix path relative to it, build artifacts left out."""
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not _is_ignored(path.relative_to(root))
    }


def replace_tree(source: Path, destination: Path) -> None:
    """Make destination hold exactly source's files, swapping directories by rename."""
    staging = destination.with_name(destination.name + ".protogen-new")
    backup = destination.with_name(destination.name + ".protogen-old")
    for leftover in (staging, backup):
        if leftover.exists():
            shutil.rmtree(leftover)
    shutil.copytree(source, staging)
    if destination.exists():
        destination.rename(backup)
    staging.rename(destination)
    if backup.exists():
        shutil.rmtree(backup)


def generate() -> int:
    with tempfile.TemporaryDirectory(prefix="protogen-") as tmp:
        out_dir = Path(tmp)
        run_protoc(out_dir)
        for target in TARGETS:
            replace_tree(out_dir / target.relative, target.destination)
    count = sum(len(list_files(target.destination)) for target in TARGETS)
    print(f"protogen: generated {count} files from {len(proto_files())} protos")
    return 0


def _diff(label: str, expected: bytes, actual: bytes) -> list[str]:
    lines = list(
        difflib.unified_diff(
            actual.decode("utf-8", errors="replace").splitlines(),
            expected.decode("utf-8", errors="replace").splitlines(),
            fromfile=f"committed/{label}",
            tofile=f"generated/{label}",
            lineterm="",
        )
    )
    if len(lines) > DIFF_LINES_PER_FILE:
        hidden = len(lines) - DIFF_LINES_PER_FILE
        lines = [*lines[:DIFF_LINES_PER_FILE], f"... {hidden} more diff lines"]
    return lines


def check() -> int:
    stale: list[str] = []
    missing: list[str] = []
    extra: list[str] = []
    diffs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="protogen-") as tmp:
        out_dir = Path(tmp)
        run_protoc(out_dir)
        for target in TARGETS:
            expected = list_files(out_dir / target.relative)
            actual = list_files(target.destination)
            shown = target.destination.relative_to(REPO_ROOT).as_posix()
            for name in sorted(expected.keys() | actual.keys()):
                label = f"{shown}/{name}"
                if name not in actual:
                    missing.append(label)
                elif name not in expected:
                    extra.append(label)
                else:
                    want, have = expected[name].read_bytes(), actual[name].read_bytes()
                    if want != have:
                        stale.append(label)
                        diffs.extend(_diff(label, want, have))
    if not (stale or missing or extra):
        print("protogen: OK, generated code is current")
        return 0
    for line in diffs:
        print(line)
    for kind, labels in (("stale", stale), ("missing", missing), ("extra", extra)):
        for label in labels:
            print(f"protogen: {kind}: {label}")
    print(
        f"protogen: generated code is out of date ({len(stale)} stale, {len(missing)} missing, "
        f"{len(extra)} extra); run `make proto`",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=("generate", "check"))
    args = parser.parse_args(argv)
    return generate() if args.command == "generate" else check()


if __name__ == "__main__":
    raise SystemExit(main())
