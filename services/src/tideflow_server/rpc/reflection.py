"""Server reflection, as `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

Clients try v1 first (buf curl, grpcurl, Postman) and only some fall back to v1alpha, but
grpcio-reflection ships only the v1alpha service. The two are the same messages under another
package name, so one v1alpha servicer answers both: its messages serialize to exactly the bytes
of their v1 twins. For the v1 service to be described by reflection like every other listed
service, its file is added to the default pool, built from v1alpha's with the package renamed.

Reflection answers from the default descriptor pool. The google.rpc error details the servers
attach to their statuses (`BadRequest`, `ErrorInfo`, ... from error_details.proto) and
`google.rpc.Status` are imported here, so a client can resolve the detail types by reflection
(`file_containing_symbol: google.rpc.BadRequest`) and decode them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1, V1ALPHA)

_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = ".grpc.reflection.v1alpha."
_V1_PACKAGE = ".grpc.reflection.v1."

# Imported for their descriptors, which reflection serves from the default pool.
ERROR_DETAIL_FILES = (error_details_pb2.DESCRIPTOR.name, status_pb2.DESCRIPTOR.name)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto as v1's: the same messages and service, renamed."""
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = _V1_FILE
    file.package = "grpc.reflection.v1"
    file.ClearField("options")
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # scalars have none, and must not get an empty one
                field.type_name = field.type_name.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
            method.output_type = method.output_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    return file


def _ensure_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pool.AddSerializedFile(_v1_file().SerializeToString())


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha on `server`, listing `service_names` and both
    reflection services."""
    _ensure_v1_file(descriptor_pool.Default())
    # grpcio-reflection's asyncio servicer, which its type stubs do not describe.
    servicer: Any = reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
        [*service_names, *SERVICE_NAMES]
    )
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": method})
            for name in SERVICE_NAMES
        ]
    )
