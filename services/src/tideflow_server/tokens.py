"""Block task tokens: the opaque bytes a worker echoes back, naming one attempt of a block."""

from __future__ import annotations

from tideflow_server.internal.v1 import task_token_pb2
from tideflow_server.rpc.errors import InvalidArgument


def parse_token(data: bytes) -> task_token_pb2.BlockTaskToken:
    """The attempt a worker's token names; INVALID_ARGUMENT for anything this server did not
    issue."""
    try:
        token = task_token_pb2.BlockTaskToken.FromString(data)
    except Exception as e:
        raise InvalidArgument("task_token is not a token this server issued") from e
    if not (token.run_id and token.execution_id and token.scheduled_event_id):
        raise InvalidArgument("task_token is not a token this server issued")
    return token
