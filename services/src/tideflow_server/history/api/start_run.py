"""StartRun: a new execution of a flow, idempotent by request id, with a reuse policy for a
run_id whose previous execution closed."""

from __future__ import annotations

import uuid

from google.protobuf import struct_pb2

from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow_server import observability
from tideflow_server.history import payloads, progress
from tideflow_server.history.api import get_run_history
from tideflow_server.history.api._common import too_big
from tideflow_server.history.interpreter import JSON, CompiledBlueprint, ExpressionError
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep, utcnow
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.namespaces import tighter
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.records import CreateMode, CurrentRunRow, FlowCheck, RunState
from tideflow_server.rpc.errors import AlreadyExists, FieldViolation, InvalidArgument

_FAILED_STATUSES = {
    common_pb2.RUN_STATUS_FAILED,
    common_pb2.RUN_STATUS_CANCELED,
    common_pb2.RUN_STATUS_TERMINATED,
    common_pb2.RUN_STATUS_TIMED_OUT,
}


def first_step(
    shard: Shard,
    *,
    namespace_id: str,
    namespace: records_pb2.NamespaceRecord,
    request: flow_service_pb2.StartRunRequest,
    flow_version: int,
    compiled: CompiledBlueprint,
    signal: flow_service_pb2.SignalRunRequest | None = None,
    parent: records_pb2.ParentLink | None = None,
) -> RunStep:
    """The new execution's state and first events: RUN_STARTED, then whatever the blueprint
    starts with (its first blocks, or a whole run of system blocks). `parent`: the run is a
    subflow block's child."""
    blueprint = compiled.blueprint
    run_input = payloads.from_payloads(request.input, "input")
    violations = compiled.validate_input(run_input)
    if violations:
        raise InvalidArgument(violations, reason="INPUT_SCHEMA_VIOLATION")

    state = records_pb2.MutableState()
    step = RunStep(state, now=utcnow())
    info = state.execution_info
    info.namespace_id = namespace_id
    info.run_id = request.run_id
    info.execution_id = str(uuid.uuid4())
    info.flow.name = blueprint.name
    info.flow.version = flow_version
    if request.task_queue.name:
        info.task_queue.CopyFrom(request.task_queue)
    else:
        info.task_queue.name = blueprint.task_queue
    info.status = common_pb2.RUN_STATUS_RUNNING
    info.state = records_pb2.RUN_STATE_RUNNING
    info.start_time.FromDatetime(step.now)
    info.start_request_id = request.request_id or str(uuid.uuid4())
    info.next_event_id = 1
    info.attempt = 1
    info.memo.CopyFrom(request.memo)
    info.input.CopyFrom(payloads.to_value(run_input))
    for name, value in _initial_vars(compiled, run_input).items():
        info.vars[name].CopyFrom(value)
    run_timeout = request.run_timeout if request.HasField("run_timeout") else blueprint.run_timeout
    if run_timeout.seconds or run_timeout.nanos:
        info.run_timeout.CopyFrom(run_timeout)
        expires = step.now + run_timeout.ToTimedelta()
        info.run_expiration_time.FromDatetime(expires)
        step.add_timer(expires).run_timeout.SetInParent()

    _, attrs = step.add_event(history_pb2.EVENT_TYPE_RUN_STARTED, "run_started_event_attributes")
    assert isinstance(attrs, history_pb2.RunStartedEventAttributes)
    attrs.flow.CopyFrom(info.flow)
    attrs.input.CopyFrom(request.input)
    attrs.request_id = info.start_request_id
    attrs.task_queue.CopyFrom(info.task_queue)
    attrs.run_timeout.CopyFrom(info.run_timeout)
    attrs.identity = request.identity
    attrs.attempt = 1
    attrs.memo.CopyFrom(request.memo)
    if parent is not None:
        _link_parent(info, attrs, parent)
    step.add_transfer().upsert_visibility.SetInParent()
    if signal is not None:
        from tideflow_server.history.api.signal_run import record_signal  # noqa: PLC0415

        record_signal(step, signal)

    progress.advance(
        step,
        compiled,
        namespace=namespace.info.name,
        max_pending_blocks=tighter(
            namespace.config.limits.max_pending_blocks, shard.config.max_pending_blocks
        ),
        max_pending_children=shard.config.max_pending_children,
        max_map_items=namespace.config.limits.max_map_items,
        max_event_waits=shard.config.max_event_waits,
    )
    return step


def _link_parent(
    info: records_pb2.RunExecutionInfo,
    started: history_pb2.RunStartedEventAttributes,
    parent: records_pb2.ParentLink,
) -> None:
    """A subflow block's child: its state keeps the link (its close is reported there), and
    RUN_STARTED names the parent run and block."""
    info.parent.CopyFrom(parent)
    started.parent.run.run_id = parent.run_id
    started.parent.run.execution_id = parent.execution_id
    started.parent.block_id = parent.block_id


def _initial_vars(compiled: CompiledBlueprint, run_input: JSON) -> dict[str, struct_pb2.Value]:
    try:
        initial = compiled.initial_vars(run_input)
    except ExpressionError as e:
        # A variable default reads the input, and this input makes it fail.
        raise InvalidArgument(
            [FieldViolation("input", f"{e.path}: `{e.expression}`: {e.message}")],
            reason="INPUT_EVALUATION_FAILED",
        ) from e
    deep = [
        FieldViolation(
            "input",
            f"vars.{name}: with this input, the default nests arrays and objects more than "
            f"{payloads.MAX_STATE_DEPTH} levels deep",
        )
        for name, value in initial.items()
        if payloads.value_nesting_exceeds(value, payloads.MAX_STATE_DEPTH)
    ]
    if deep:
        raise InvalidArgument(deep, reason="INPUT_EVALUATION_FAILED")
    return {name: payloads.to_value(value) for name, value in initial.items()}


def _reuse(
    policy: common_pb2.RunIdReusePolicy.ValueType, current: CurrentRunRow, run_id: str
) -> None:
    """Raise unless `policy` lets a new execution follow the closed `current` one."""
    if policy == common_pb2.RUN_ID_REUSE_POLICY_REJECT_DUPLICATE or (
        policy == common_pb2.RUN_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY
        and current.status not in _FAILED_STATUSES
    ):
        raise AlreadyExists(
            f"run_id {run_id!r} already ran (execution {current.execution_id}) and the reuse "
            "policy does not allow another execution",
            reason="RUN_ID_REUSE_REJECTED",
            metadata={"execution_id": current.execution_id},
        )


async def invoke(
    shard: Shard,
    request: history_service_pb2.StartRunRequest,
    *,
    signal: flow_service_pb2.SignalRunRequest | None = None,
) -> history_service_pb2.StartRunResponse:
    response = await _start(shard, request, signal=signal)
    if request.request.wait_for_close:
        # Start and wait: the same long poll as GetRunHistory with CLOSE_EVENT, bounded by
        # what the frontend allowed (its wait-for-close timeout and the caller's deadline).
        closed = await get_run_history.closing_event(
            shard,
            request.namespace_id,
            common_pb2.RunRef(
                run_id=request.request.run_id, execution_id=response.response.execution_id
            ),
            timeout_s=min(
                request.wait_timeout.ToTimedelta().total_seconds(),
                shard.config.wait_for_close_timeout_s,
            ),
        )
        if closed is not None:
            response.response.close_event.CopyFrom(closed)
    return response


async def _start(
    shard: Shard,
    request: history_service_pb2.StartRunRequest,
    *,
    signal: flow_service_pb2.SignalRunRequest | None,
) -> history_service_pb2.StartRunResponse:
    start = request.request
    namespace = await shard.namespaces.by_id(request.namespace_id)
    flows, name = shard.flows, start.flow.name
    # The latest version as last read, checked by the store in the create, saves a read per
    # start; a version registered since makes the create fail with FlowChanged.
    known = flows.latest_known(request.namespace_id, name) if start.flow.version == 0 else None
    if known is not None:
        (flow, compiled), check = known, FlowCheck(name, known[0].version)
    else:
        flow, compiled = await flows.get(
            request.namespace_id, name, start.flow.version, request.parent.entry
        )
        check = None
    mode, previous = CreateMode.BRAND_NEW, None
    for _ in range(3):
        with observability.decision(shard.shard_id, start.run_id) as span:
            step = first_step(
                shard,
                namespace_id=request.namespace_id,
                namespace=namespace,
                request=start,
                flow_version=flow.version,
                compiled=compiled,
                signal=signal,
                parent=request.parent if request.HasField("parent") else None,
            )
            info = step.info
            entry = shard.execution_entry(request.namespace_id, start.run_id, info.execution_id)
            async with entry.lock:
                try:
                    await shard.create(
                        entry, step, mode=mode, previous_execution_id=previous, flow_check=check
                    )
                except store.SizeLimitExceeded as e:
                    raise too_big(e, "input") from e
                except store.FlowChanged:
                    flows.forget_latest(request.namespace_id, name)
                    flow, compiled = await flows.get(request.namespace_id, name, 0)
                    check = None
                    continue
                except store.CurrentRunConditionFailed as e:
                    current = e.current
                    if current.start_request_id == info.start_request_id:
                        return _response(current.execution_id, started=False)
                    if current.state is not RunState.CLOSED:
                        if (
                            start.run_id_reuse_policy
                            == common_pb2.RUN_ID_REUSE_POLICY_TERMINATE_IF_RUNNING
                        ):
                            from tideflow_server.history.api import terminate_run  # noqa: PLC0415

                            await terminate_run.terminate(
                                shard,
                                request.namespace_id,
                                start.run_id,
                                current.execution_id,
                                reason="terminated by a new start (TERMINATE_IF_RUNNING)",
                                identity=start.identity,
                            )
                            mode, previous = CreateMode.REUSE_CLOSED, current.execution_id
                            continue
                        raise AlreadyExists(
                            f"run_id {start.run_id!r} is already running "
                            f"(execution {current.execution_id})",
                            reason="RUN_ALREADY_STARTED",
                            metadata={"execution_id": current.execution_id},
                        ) from e
                    _reuse(start.run_id_reuse_policy, current, start.run_id)
                    mode, previous = CreateMode.REUSE_CLOSED, current.execution_id
                    continue
                except store.ConditionFailed:
                    continue  # the pointer moved between our read and write: decide again
            span.set_attribute("tideflow.events", len(step.events))
            return _response(info.execution_id, started=True)
    raise AlreadyExists(f"run_id {start.run_id!r} is being started concurrently")


def _response(execution_id: str, *, started: bool) -> history_service_pb2.StartRunResponse:
    response = history_service_pb2.StartRunResponse()
    response.response.execution_id = execution_id
    response.response.started = started
    return response
