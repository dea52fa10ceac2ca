"""Every .proto under proto/ carries the file options other languages' generators need, so
protoc-gen-go (and the Java and C# generators) work on proto/ as it is, without `M` flags.

Read from the descriptors protoc builds out of proto/ (not from the committed stubs), so a new
.proto file without the options fails here before anyone generates Go code from it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
GO_MODULE = "github.com/tideflow/tideflow/workers/go"
"""The Go worker library's module (workers/go); its generated code lives under gen/."""

# Per proto package: the Go package name, the Java package and the C# namespace. The Go import
# path is not listed: it is always GO_MODULE/gen/<the file's directory under proto/>.
EXPECTED = {
    "tideflow.api.v1": ("tideflowv1", "io.tideflow.api.v1", "Tideflow.Api.V1"),
    "tideflow_server.internal.v1": (
        "internalv1",
        "io.tideflow.server.internal.v1",
        "Tideflow.Server.Internal.V1",
    ),
}


def _descriptors(tmp_path: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    files = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    out = tmp_path / "descriptors.pb"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={resources.files('grpc_tools').joinpath('_proto')}",
            f"--descriptor_set_out={out}",
            *files,
        ]
    )
    assert status == 0
    parsed = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert sorted(f.name for f in parsed.file) == files
    return list(parsed.file)


def test_every_proto_declares_the_language_options(tmp_path: Path) -> None:
    problems: list[str] = []
    for file in _descriptors(tmp_path):
        if file.package not in EXPECTED:
            problems.append(f"{file.name}: package {file.package} has no expected options here")
            continue
        go_name, java_package, csharp_namespace = EXPECTED[file.package]
        directory = file.name.rsplit("/", 1)[0]
        present = {field.name: value for field, value in file.options.ListFields()}
        wanted = {
            "go_package": f"{GO_MODULE}/gen/{directory};{go_name}",
            "java_package": java_package,
            "java_multiple_files": True,
            "csharp_namespace": csharp_namespace,
        }
        for name, value in wanted.items():
            got = present.get(name, "unset")
            if got != value:
                problems.append(f"{file.name}: {name} is {got!r}, want {value!r}")
    assert problems == []


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_a_package_maps_to_one_directory(tmp_path: Path, package: str) -> None:
    """One Go package per proto package: its files all sit in the directory the import path
    names (protoc-gen-go writes them there)."""
    directories = {f.name.rsplit("/", 1)[0] for f in _descriptors(tmp_path) if f.package == package}
    assert directories == {package.replace(".", "/")}
