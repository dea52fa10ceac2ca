"""A fuzz test of the public API: every RPC of FlowService and OperatorService gets requests
that hypothesis builds from the request's descriptor (tests/support/fuzz.py), and random bytes.

It asserts the contract at the edge (DESIGN.md invariant 5): every answer comes from the
server and is neither INTERNAL nor UNKNOWN, only the long polls may run out their deadline, and
a refused request changes nothing, as a fingerprint of what a request could reach shows (the
namespaces, the fuzzed namespace's flows, the test's own open run, and the run the request
names).

Two thirds of the requests are a valid request of the RPC (BASES) with some fields replaced
by fuzzed ones, so they get past the first check to the ones behind it; the others are fuzzed
whole.

Examples per RPC: TIDEFLOW_FUZZ_EXAMPLES (default 25, in CI 200). Derandomized, so a run is
repeatable; a failure prints the request that caused it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, duration_pb2, json_format, message_factory, struct_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.local.cluster import TEST_SETTINGS
from tests.support.cluster import running_sqlite_cluster
from tests.support.flows import Client, payloads
from tests.support.fuzz import BYTES, FLOAT_EDGES, STRINGS, Strategy, message_strategy
from tideflow.api.v1 import blueprint_pb2, flow_service_pb2, operator_service_pb2

EXAMPLES = int(os.environ.get("TIDEFLOW_FUZZ_EXAMPLES", "200" if os.environ.get("CI") else "25"))
"""Per RPC, of fuzzed requests; random bytes get a quarter as many (every one of them fails to
parse the same way)."""
NAMESPACE = "fuzz"
ADMIN_NAMESPACE = "fuzz-admin"
"""The one the namespace RPCs update, so a fuzzed config (a tiny rate limit) never slows the
namespace every other RPC is fuzzed in."""
FLOW = "fuzzed"
CALL_TIMEOUT_S = 10.0
POLL_S = 0.1
SETTINGS: dict[str, Any] = {
    **TEST_SETTINGS,
    "history": {
        **TEST_SETTINGS["history"],
        "long_poll_timeout_s": POLL_S,
        "wait_for_close_timeout_s": POLL_S,
    },
    "matching": {**TEST_SETTINGS["matching"], "long_poll_timeout_s": POLL_S},
}
LONG_POLLS = {"PollBlockTask", "GetRunHistory", "StartRun"}
"""May answer DEADLINE_EXCEEDED: they wait by design (StartRun with wait_for_close)."""
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
CHANGES_ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
"""Answers after which the state may have changed: accepted, or outcome unknown."""
NOT_FROM_THE_SERVER = "Stream removed"
"""How gRPC's client describes a reply it could not take (say, status details over its
metadata limit): the caller never learns what the server said."""

BLUEPRINT = {
    "name": FLOW,
    "version": 1,
    "task_queue": "fuzz-queue",
    # Nothing happens to a run by itself while it is fuzzed (no timeout, no retry timer), so
    # its state changes only with an accepted request.
    "timeouts": {"start_to_close": "3600s"},
    "retry": {"maximum_attempts": 1},
    "blocks": [{"id": "a", "external": {"block": "step@1"}, "input": "${input}"}],
    "output": "${blocks.a.output}",
}
FIXED = "{fixed}"
"""In BASES: the test's own run, whose block a poll has started."""
_PAYLOAD = json_format.MessageToDict(payloads({"n": 1}))
_TASK = {"namespace": NAMESPACE, "identity": "fuzz-worker"}
BASES: dict[str, dict[str, Any]] = {
    "RegisterNamespace": {"namespace": "fuzz-other", "description": "d"},
    "DescribeNamespace": {"namespace": ADMIN_NAMESPACE},
    "UpdateNamespace": {
        "namespace": ADMIN_NAMESPACE,
        "config": {
            "retention": "86400s",
            "rate_limits": {"requests_per_second": 100, "burst": 200},
        },
        "update_mask": "config",
    },
    "RegisterFlow": {"namespace": NAMESPACE, "blueprint": {**BLUEPRINT, "version": 0}},
    "DescribeFlow": {"namespace": NAMESPACE, "name": FLOW},
    "ListFlows": {"namespace": NAMESPACE},
    "StartRun": {
        "namespace": NAMESPACE,
        "run_id": "fuzz-0",
        "flow": {"name": FLOW},
        "input": _PAYLOAD,
    },
    "SignalRun": {
        "namespace": NAMESPACE,
        "run": {"run_id": FIXED},
        "signal_name": "s",
        "input": _PAYLOAD,
    },
    "SignalWithStartRun": {
        "namespace": NAMESPACE,
        "run_id": FIXED,
        "flow": {"name": FLOW},
        "input": _PAYLOAD,
        "signal_name": "s",
        "signal_input": _PAYLOAD,
    },
    "CancelRun": {"namespace": NAMESPACE, "run": {"run_id": FIXED}, "reason": "r"},
    "TerminateRun": {"namespace": NAMESPACE, "run": {"run_id": FIXED}, "reason": "r"},
    "DescribeRun": {"namespace": NAMESPACE, "run": {"run_id": FIXED}},
    "GetRunHistory": {"namespace": NAMESPACE, "run": {"run_id": FIXED}},
    "ListRuns": {"namespace": NAMESPACE},
    "PollBlockTask": {**_TASK, "task_queue": {"name": "fuzz-empty"}},
    "RespondBlockCompleted": {**_TASK, "result": _PAYLOAD},
    "RespondBlockCompletedBatch": {"completions": [{**_TASK, "result": _PAYLOAD}]},
    "RespondBlockFailed": {
        **_TASK,
        "failure": {"message": "boom", "application_failure_info": {"type": "Boom"}},
    },
    "RespondBlockCanceled": _TASK,
    "RecordBlockHeartbeat": {**_TASK, "details": _PAYLOAD},
    "DescribeTaskQueue": {"namespace": NAMESPACE, "task_queue": {"name": "fuzz-queue"}},
}


@dataclass(frozen=True)
class Method:
    service: descriptor.ServiceDescriptor
    method: descriptor.MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"


METHODS = [
    Method(service, method)
    for service in (
        flow_service_pb2.DESCRIPTOR.services_by_name["FlowService"],
        operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"],
    )
    for method in service.methods
]


@dataclass(frozen=True)
class Target:
    """The server, and the test's own open run with its block started by a poll."""

    channel: grpc.Channel
    run_id: str
    task_token: bytes

    def call(self, method: Method, request: bytes) -> tuple[grpc.StatusCode, str]:
        call = self.channel.unary_unary(  # bytes in, bytes out
            method.path, request_serializer=None, response_deserializer=None
        )
        try:
            call(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
        return grpc.StatusCode.OK, ""

    def fingerprint(self, request: Message | None) -> tuple[object, ...]:
        """What a refused request must leave as it was."""
        api = flow_service_pb2
        namespaces = self.ask(
            "ListNamespaces", api.ListNamespacesRequest(page_size=1000), api.ListNamespacesResponse
        )
        flows = self.ask(
            "ListFlows",
            api.ListFlowsRequest(namespace=NAMESPACE, page_size=1000),
            api.ListFlowsResponse,
        )
        named = _run_id(request) if request is not None else None
        current: object = None
        if named and named != self.run_id:
            described = self._describe(named)
            # Its execution only: an accepted earlier request may have started it, and its
            # blocks and timers move on without any request.
            current = (
                described.run_info.run
                if isinstance(described, flow_service_pb2.DescribeRunResponse)
                else described
            )
        return _same(namespaces), _same(flows), _same(self._describe(self.run_id)), _same(current)

    def _describe(self, run_id: str) -> Any:
        request = flow_service_pb2.DescribeRunRequest(namespace=NAMESPACE)
        request.run.run_id = run_id
        return self.ask("DescribeRun", request, flow_service_pb2.DescribeRunResponse)

    def ask(self, name: str, request: Message, answer: type[Message]) -> Any:
        """A FlowService call: its answer, or the status it failed with."""
        call = self.channel.unary_unary(
            f"/tideflow.api.v1.FlowService/{name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=answer.FromString,
        )
        try:
            return call(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            return e.code()


def _same(answer: object) -> object:
    """A comparable form of an answer."""
    return answer.SerializeToString(deterministic=True) if isinstance(answer, Message) else answer


def _run_id(request: Message) -> str | None:
    for path in (("run_id",), ("run", "run_id")):
        node: Any = request
        for name in path:
            if name not in node.DESCRIPTOR.fields_by_name:
                break
            node = getattr(node, name)
        else:
            return str(node)
    return None


@pytest.fixture(scope="module")
async def frontend(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A cluster with both namespaces and the flow."""
    root = tmp_path_factory.mktemp("fuzz")
    async with running_sqlite_cluster(root, settings=SETTINGS) as cluster:
        client = Client(cluster.frontend, NAMESPACE)
        try:
            await client.ensure_namespace()
            await Client(cluster.frontend, ADMIN_NAMESPACE).ensure_namespace()
            await client.register(BLUEPRINT)
            yield cluster.frontend
        finally:
            await client.close()


@pytest.fixture(scope="module")
def channel(frontend: str) -> Iterator[grpc.Channel]:
    opened = grpc.insecure_channel(
        frontend,
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    try:
        yield opened
    finally:
        opened.close()


def _target(channel: grpc.Channel, method: Method, kind: str) -> Target:
    """A run of the test's own, on a queue of its own, its block started by a poll."""
    run_id = queue = f"fuzz-{kind}-{method.name.lower()}"
    start = flow_service_pb2.StartRunRequest(namespace=NAMESPACE, run_id=run_id)
    start.flow.name = FLOW
    start.flow.version = 1  # not a fuzzed version registered since
    start.task_queue.name = queue
    start.input.CopyFrom(payloads({"n": 1}))
    channel.unary_unary(
        "/tideflow.api.v1.FlowService/StartRun",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=flow_service_pb2.StartRunResponse.FromString,
    )(start, timeout=CALL_TIMEOUT_S)
    target = Target(channel, run_id, b"")
    poll = flow_service_pb2.PollBlockTaskRequest(namespace=NAMESPACE, identity="fuzz")
    poll.task_queue.name = queue
    for _ in range(int(30 / POLL_S)):  # polls answer empty after POLL_S: poll until it comes
        task = target.ask("PollBlockTask", poll, flow_service_pb2.PollBlockTaskResponse)
        assert isinstance(task, flow_service_pb2.PollBlockTaskResponse), task
        if task.task_token:
            return Target(channel, run_id, task.task_token)
    raise AssertionError(f"the block of {run_id} never reached a poll")


def _base(method: Method, target: Target) -> Message | None:
    given = BASES.get(method.name)
    if given is None:
        return None
    # Any: the request's class is only known at run time.
    base: Any = json_format.ParseDict(
        given, message_factory.GetMessageClass(method.method.input_type)()
    )
    if _run_id(base) == FIXED:
        (base.run if "run" in base.DESCRIPTOR.fields_by_name else base).run_id = target.run_id
    for task in base.completions if method.name == "RespondBlockCompletedBatch" else [base]:
        if "task_token" in task.DESCRIPTOR.fields_by_name:
            task.task_token = target.task_token
    return base  # type: ignore[no-any-return]


def _overlay(base: Message, fuzzed: Message) -> Message:
    """`base` with the fields `fuzzed` sets replaced by fuzzed's."""
    merged = type(base)()
    merged.CopyFrom(base)
    for field, _ in fuzzed.ListFields():
        merged.ClearField(field.name)
    merged.MergeFrom(fuzzed)
    return merged


def _requests(method: Method, target: Target) -> Strategy:
    fuzzed = message_strategy(method.method.input_type, hints=_hints(method, target))
    base = _base(method, target)
    if base is None:
        return fuzzed
    overlaid = fuzzed.map(lambda f: _overlay(base, f))
    return st.one_of(fuzzed, overlaid, overlaid)


def _hints(method: Method, target: Target) -> dict[str, Strategy]:
    """Mostly real names, so requests get past the first lookup to the checks behind it."""
    namespace = ADMIN_NAMESPACE if method.name.endswith("Namespace") else NAMESPACE
    blueprint = json_format.ParseDict(BLUEPRINT, blueprint_pb2.Blueprint())
    return {
        "namespace": st.one_of(st.just(namespace), st.just(namespace), STRINGS),
        "run_id": st.one_of(
            st.just(target.run_id), st.integers(0, 9).map(lambda i: f"fuzz-{i}"), STRINGS
        ),
        "name": st.one_of(st.just(FLOW), STRINGS),
        "requests_per_second": st.one_of(st.sampled_from(FLOAT_EDGES), st.floats()),
        "task_token": st.one_of(st.just(target.task_token), BYTES),
        "blueprint": st.one_of(
            _mutated(blueprint),
            _mutated(blueprint),
            message_strategy(blueprint_pb2.Blueprint.DESCRIPTOR, depth=1),
        ),
    }


DURATIONS: list[Callable[[blueprint_pb2.Blueprint], Message]] = [
    lambda b: b.run_timeout,
    lambda b: b.timeouts.start_to_close,
    lambda b: b.timeouts.heartbeat,
    lambda b: b.retry.initial_interval,
    lambda b: b.retry.maximum_interval,
    lambda b: b.blocks[0].external.timeouts.schedule_to_close,
    lambda b: b.blocks[0].external.retry.initial_interval,
]
"""Where a blueprint holds a Duration."""


def _mutated(valid: blueprint_pb2.Blueprint) -> Strategy:
    """The valid blueprint as the next version, with one thing fuzzed: a Duration, a
    variable's default or the output. Registration checks these, and a start reads them."""

    def copy() -> blueprint_pb2.Blueprint:
        blueprint = blueprint_pb2.Blueprint()
        blueprint.CopyFrom(valid)
        blueprint.version = 0
        return blueprint

    def duration(
        at: Callable[[blueprint_pb2.Blueprint], Message], given: Message
    ) -> blueprint_pb2.Blueprint:
        blueprint = copy()
        at(blueprint).CopyFrom(given)
        return blueprint

    def var(given: struct_pb2.Value) -> blueprint_pb2.Blueprint:
        blueprint = copy()
        blueprint.vars["v"].CopyFrom(given)
        return blueprint

    def output(given: struct_pb2.Value) -> blueprint_pb2.Blueprint:
        blueprint = copy()
        blueprint.output.CopyFrom(given)
        return blueprint

    values: Strategy = message_strategy(struct_pb2.Value.DESCRIPTOR)
    return st.one_of(
        st.builds(
            duration,
            st.sampled_from(DURATIONS),
            message_strategy(duration_pb2.Duration.DESCRIPTOR),
        ),
        values.map(var),
        values.map(output),
    )


def _answer_is_clean(
    target: Target, method: Method, request: bytes, parsed: Message | None
) -> None:
    before = target.fingerprint(parsed)
    code, details = target.call(method, request)
    assert code not in NEVER, f"{method.name} answered {code.name}: {details}"
    assert not details.startswith(NOT_FROM_THE_SERVER), f"{method.name}: {details}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        assert method.name in LONG_POLLS, f"{method.name} ran out its deadline"
    if code not in CHANGES_ALLOWED:
        after = target.fingerprint(parsed)
        assert after == before, f"{method.name} was refused ({code.name}) but changed state"


def _fuzz(check: Callable[[Any], None], strategy: Strategy, examples: int) -> None:
    settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )(given(strategy)(check))()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_fuzzed_requests_are_answered_cleanly(channel: grpc.Channel, method: Method) -> None:
    target = _target(channel, method, "requests")

    def check(request: Message) -> None:
        _answer_is_clean(target, method, request.SerializeToString(), request)

    _fuzz(check, _requests(method, target), EXAMPLES)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_random_bytes_are_answered_cleanly(channel: grpc.Channel, method: Method) -> None:
    target = _target(channel, method, "bytes")

    def check(request: bytes) -> None:
        _answer_is_clean(target, method, request, None)

    _fuzz(check, BYTES, max(1, EXAMPLES // 4))
