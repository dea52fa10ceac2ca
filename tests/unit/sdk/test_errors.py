"""Server statuses become typed SDK errors carrying the google.rpc details."""

from __future__ import annotations

import grpc
from grpc_status import rpc_status

from tideflow.errors import InvalidArgumentError, NotFoundError, RPCError, from_grpc
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument, NotFound


def _aio_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code=status.code,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
        debug_error_string="",
    )


def test_invalid_argument_keeps_its_field_violations() -> None:
    server = InvalidArgument([FieldViolation("blocks[1].needs[0]", "unknown block 'x'")])
    error = from_grpc(_aio_error(rpc_status.to_status(server.to_status())))
    assert isinstance(error, InvalidArgumentError)
    assert [(v.field, v.description) for v in error.violations] == [
        ("blocks[1].needs[0]", "unknown block 'x'")
    ]


def test_reason_and_metadata_come_through() -> None:
    server = NotFound("run 'x' not found", reason="RUN_NOT_FOUND", metadata={"run_id": "x"})
    error = from_grpc(_aio_error(rpc_status.to_status(server.to_status())))
    assert isinstance(error, NotFoundError)
    assert (error.reason, error.metadata, error.message) == (
        "RUN_NOT_FOUND",
        {"run_id": "x"},
        "run 'x' not found",
    )


def test_a_status_without_details_is_still_typed() -> None:
    bare = grpc.aio.AioRpcError(
        code=grpc.StatusCode.DATA_LOSS,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(),
        details="gone",
        debug_error_string="",
    )
    error = from_grpc(bare)
    assert type(error) is RPCError and error.code == grpc.StatusCode.DATA_LOSS
