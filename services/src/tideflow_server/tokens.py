"""Block task tokens, the opaque bytes a worker echoes back naming one attempt of a block, and
the block task a worker receives with one.

A token is a `SignedTaskToken`: the attempt (`BlockTaskToken`) and an HMAC of it. Matching and
history build tokens unsigned; the frontend, which alone holds the keys, signs each on its way
to a worker (`TokenKeys.sign`) and checks it when the worker echoes it back
(`TokenKeys.verify`), before any role acts on it. So every field of a token may be public
(DescribeRun and GetRunHistory show them all) without anyone being able to build one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Final

from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server.internal.v1 import history_service_pb2, task_token_pb2
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument, PermissionDenied

_LABEL: Final = b"tideflow.task_token.v1\x00"
"""Signed before the body, so that no other HMAC under these keys can pass for a token's."""
CLUSTER_KEY_ID: Final = "cluster"
"""The key id of the cluster's own key (ClusterMetadata.task_token_secret)."""
FORGED_REASON: Final = "TASK_TOKEN_INVALID"
NAMESPACE_REASON: Final = "TASK_TOKEN_OTHER_NAMESPACE"


def _foreign(field: str) -> InvalidArgument:
    return InvalidArgument(
        [
            FieldViolation(
                field,
                "is not a task token this server issued; echo the task_token of the polled "
                "task unchanged",
            )
        ]
    )


def _open(
    data: bytes, field: str
) -> tuple[task_token_pb2.SignedTaskToken, task_token_pb2.BlockTaskToken]:
    try:
        signed = task_token_pb2.SignedTaskToken.FromString(data)
        token = task_token_pb2.BlockTaskToken.FromString(signed.body)
    except Exception:
        raise _foreign(field) from None
    if not (token.run_id and token.execution_id and token.scheduled_event_id):
        raise _foreign(field)
    return signed, token


def parse_token(data: bytes, field: str = "task_token") -> task_token_pb2.BlockTaskToken:
    """The attempt a token names, signature unchecked (the frontend checked it);
    INVALID_ARGUMENT naming `field` (where the token is in the request) for anything that is
    not a token."""
    return _open(data, field)[1]


def seal(token: task_token_pb2.BlockTaskToken) -> bytes:
    """`token` as task token bytes, unsigned (the frontend signs it for the worker)."""
    return task_token_pb2.SignedTaskToken(body=token.SerializeToString()).SerializeToString()


class TokenKeys:
    """The keys that sign and verify task tokens: the first signs, all verify."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one task token key")
        self._signing_id, self._signing = keys[0]
        self._keys: Mapping[str, bytes] = dict(keys)

    def _mac(self, secret: bytes, body: bytes) -> bytes:
        return hmac.new(secret, _LABEL + body, hashlib.sha256).digest()

    def sign(self, data: bytes) -> bytes:
        """An unsigned token (from matching or history) signed with the signing key. Empty
        stays empty (no task)."""
        if not data:
            return data
        signed = task_token_pb2.SignedTaskToken.FromString(data)
        signed.key_id = self._signing_id
        signed.signature = self._mac(self._signing, signed.body)
        return signed.SerializeToString()

    def sign_task(self, task: flow_service_pb2.PollBlockTaskResponse) -> None:
        if task.task_token:
            task.task_token = self.sign(task.task_token)

    def verify(
        self, data: bytes, *, namespace_id: str, field: str = "task_token"
    ) -> task_token_pb2.BlockTaskToken:
        """The attempt a worker's token names, once its signature checks out under a key this
        frontend holds and it is of `namespace_id`; PERMISSION_DENIED otherwise."""
        signed, token = _open(data, field)
        secret = self._keys.get(signed.key_id)
        if secret is None or not hmac.compare_digest(
            self._mac(secret, signed.body), signed.signature
        ):
            raise PermissionDenied(
                f"{field} was not issued by this cluster (or its key was retired); echo the "
                "task_token of the polled task unchanged",
                reason=FORGED_REASON,
            )
        if token.namespace_id != namespace_id:
            raise PermissionDenied(
                f"{field} is for a block of another namespace than the request's",
                reason=NAMESPACE_REASON,
            )
        return token


def block_task_response(
    *,
    namespace_id: str,
    run: common_pb2.RunRef,
    scheduled_event_id: int,
    started: history_service_pb2.RecordBlockStartedResponse,
    attempt: int = 0,
    block_id: str = "",
) -> flow_service_pb2.PollBlockTaskResponse:
    """The worker's view of a started attempt, with the token that names it. Built by matching
    for a polled task and by history for an eagerly dispatched one; `attempt` and `block_id`
    stand in when the started record lacks them."""
    event = started.scheduled_event
    scheduled = event.block_scheduled_event_attributes
    attempt = started.attempt or attempt
    block_id = scheduled.block_id or block_id
    token = task_token_pb2.BlockTaskToken(
        namespace_id=namespace_id,
        run_id=run.run_id,
        execution_id=run.execution_id,
        scheduled_event_id=scheduled_event_id,
        attempt=attempt,
        block_id=block_id,
    )
    response = flow_service_pb2.PollBlockTaskResponse(
        task_token=seal(token),
        run=run,
        block_id=block_id,
        block_type=scheduled.block_type,
        attempt=attempt,
    )
    # Copy only what is set, so an absent field stays absent for the worker.
    if started.HasField("flow"):
        response.flow.CopyFrom(started.flow)
    if scheduled.HasField("input"):
        response.input.CopyFrom(scheduled.input)
    if event.HasField("event_time"):
        response.scheduled_time.CopyFrom(event.event_time)
    if started.HasField("current_attempt_scheduled_time"):
        response.current_attempt_scheduled_time.CopyFrom(started.current_attempt_scheduled_time)
    if started.HasField("started_time"):
        response.started_time.CopyFrom(started.started_time)
    if scheduled.HasField("timeouts"):
        response.timeouts.CopyFrom(scheduled.timeouts)
    if started.HasField("heartbeat_details"):
        response.heartbeat_details.CopyFrom(started.heartbeat_details)
    if scheduled.HasField("retry_policy"):
        response.retry_policy.CopyFrom(scheduled.retry_policy)
    if started.trace_context:
        response.trace_context.update(started.trace_context)
    return response
