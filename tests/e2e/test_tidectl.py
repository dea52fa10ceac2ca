"""tidectl end to end: the installed command run as a subprocess against a real cluster."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, echo

TIDECTL = str(Path(sys.executable).with_name("tidectl"))

pytestmark = pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def tidectl(address: str, namespace: str, *args: str, timeout_s: float = 60) -> Result:
    process = await asyncio.create_subprocess_exec(
        TIDECTL,
        "--address",
        address,
        "-n",
        namespace,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def one_line_error(result: Result, code: int) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("tidectl: ")
    assert "Traceback" not in result.err
    return lines[0]


def echo_flow(name: str, queue: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": 1,
        "task_queue": queue,
        "blocks": [
            {
                "id": "echo",
                "external": {"block": "echo@1", "timeouts": {"start_to_close": "10s"}},
                "input": "${input}",
            }
        ],
        "output": "${blocks.echo.output}",
    }


def yaml_flow(name: str, queue: str) -> str:
    return f"""\
name: {name}
version: 1
task_queue: {queue}
blocks:
  - id: echo
    external:
      block: echo@1
      timeouts:
        start_to_close: 10s
    input: "${{input}}"
output: "${{blocks.echo.output}}"
"""


@dataclass
class Env:
    cluster: Cluster
    namespace: str
    flow: str
    queue: str
    tmp: Path

    async def ctl(self, *args: str, timeout_s: float = 60) -> Result:
        return await tidectl(self.cluster.frontend, self.namespace, *args, timeout_s=timeout_s)

    def worker(self) -> BlockWorker:
        return BlockWorker(
            self.cluster.frontend, self.queue, {"echo@1": echo}, namespace=self.namespace
        )


@pytest.fixture
async def env(cluster: Cluster, tmp_path: Path) -> AsyncIterator[Env]:
    namespace, flow, queue = _name("ctl"), _name("echo"), _name("q")
    created = await tidectl(cluster.frontend, "default", "namespace", "create", namespace)
    assert created.code == 0, created
    blueprint = tmp_path / "echo.json"
    blueprint.write_text(json.dumps(echo_flow(flow, queue)))
    registered = await tidectl(cluster.frontend, namespace, "flow", "register", str(blueprint))
    assert registered.code == 0, registered
    yield Env(cluster, namespace, flow, queue, tmp_path)


async def test_namespace_create_describe_list(cluster: Cluster) -> None:
    name = _name("ns")
    created = await tidectl(
        cluster.frontend, "default", "namespace", "create", name, "--description", "e2e"
    )
    assert created.code == 0, created
    assert name in created.out
    described = await tidectl(cluster.frontend, name, "-o", "json", "namespace", "describe")
    assert described.code == 0, described
    assert described.json()["info"]["name"] == name
    assert described.json()["info"]["description"] == "e2e"
    listed = await tidectl(cluster.frontend, "default", "-o", "json", "namespace", "list")
    assert name in {ns["info"]["name"] for ns in listed.json()}
    table = await tidectl(cluster.frontend, "default", "namespace", "list")
    assert table.code == 0 and name in table.out
    missing = await tidectl(cluster.frontend, "default", "namespace", "describe", _name("nope"))
    assert "not found" in one_line_error(missing, 3)
    again = await tidectl(cluster.frontend, "default", "namespace", "create", name)
    assert "already exists" in one_line_error(again, 5)


async def test_namespace_update_sets_retention(cluster: Cluster) -> None:
    name = _name("ns")
    assert (await tidectl(cluster.frontend, "default", "namespace", "create", name)).code == 0
    updated = await tidectl(
        cluster.frontend, name, "-o", "json", "namespace", "update", "--retention", "7d"
    )
    assert updated.code == 0, updated
    assert updated.json()["config"]["retention"] == "604800s"
    described = await tidectl(cluster.frontend, name, "-o", "json", "namespace", "describe")
    assert described.json()["config"]["retention"] == "604800s"
    assert described.json()["info"]["name"] == name  # nothing else changed
    nothing = await tidectl(cluster.frontend, name, "namespace", "update")
    assert "nothing to change" in one_line_error(nothing, 2)
    bad = await tidectl(cluster.frontend, name, "namespace", "update", "--retention", "soon")
    assert "--retention 'soon'" in one_line_error(bad, 2)
    missing = await tidectl(
        cluster.frontend, "default", "namespace", "update", _name("nope"), "--retention", "1d"
    )
    assert "not found" in one_line_error(missing, 3)


async def test_flow_register_yaml_and_json_describe_list(env: Env) -> None:
    yaml_name = _name("yflow")
    path = env.tmp / "flow.yaml"
    path.write_text(yaml_flow(yaml_name, env.queue))
    registered = await env.ctl("flow", "register", str(path))
    assert registered.code == 0, registered
    assert f"{yaml_name}@1" in registered.out

    described = await env.ctl("-o", "json", "flow", "describe", yaml_name)
    assert described.code == 0, described
    flow = described.json()
    assert (flow["name"], flow["version"]) == (yaml_name, 1)
    assert flow["blueprint"]["blocks"][0]["id"] == "echo"
    versioned = await env.ctl("flow", "describe", env.flow, "--version", "1")
    assert versioned.code == 0 and env.flow in versioned.out

    listed = await env.ctl("-o", "json", "flow", "list")
    assert {yaml_name, env.flow} <= {f["name"] for f in listed.json()}
    only = await env.ctl("-o", "json", "flow", "list", "--name", yaml_name)
    assert [f["name"] for f in only.json()] == [yaml_name]
    table = await env.ctl("flow", "list")
    assert yaml_name in table.out and env.flow in table.out

    missing = await env.ctl("flow", "describe", "ghost")
    assert one_line_error(missing, 3) == (
        f"tidectl: flow 'ghost' not found in namespace '{env.namespace}'"
    )


async def test_malformed_blueprint_lists_field_violations(env: Env) -> None:
    bad = echo_flow(_name("bad"), env.queue)
    bad["blocks"].append({**bad["blocks"][0], "needs": ["ghost"]})
    path = env.tmp / "bad.json"
    path.write_text(json.dumps(bad))
    result = await env.ctl("flow", "register", str(path))
    assert result.code == 2, result
    assert result.err.startswith(f"tidectl: blueprint {path} is invalid: blocks[1]")
    assert "blocks[1].needs[0]" in result.err
    assert "Traceback" not in result.err

    broken = env.tmp / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert "not valid YAML" in one_line_error(await env.ctl("flow", "register", str(broken)), 2)
    unknown = env.tmp / "unknown.json"
    unknown.write_text(json.dumps({"name": "x", "bogus": 1}))
    assert "bogus" in one_line_error(await env.ctl("flow", "register", str(unknown)), 2)
    absent = await env.ctl("flow", "register", str(env.tmp / "absent.json"))
    assert "cannot read" in one_line_error(absent, 2)


async def test_run_start_wait_prints_the_result(env: Env) -> None:
    async with env.worker():
        text = await env.ctl("run", "start", env.flow, "--input", '{"n": 41}', "--wait")
        assert text.code == 0, text
        assert "COMPLETED" in text.out and '"n": 41' in text.out

        run_id = _name("run")
        started = await env.ctl(
            "-o",
            "json",
            "run",
            "start",
            env.flow,
            "--run-id",
            run_id,
            "--input",
            "[1, 2]",
            "--wait",
        )
        assert started.code == 0, started
        reply = started.json()
        assert reply["run_id"] == run_id and reply["execution_id"]
        assert (reply["status"], reply["result"]) == ("COMPLETED", [1, 2])

    result = await env.ctl("-o", "json", "run", "result", run_id)
    assert result.json()["result"] == [1, 2]
    described = await env.ctl("-o", "json", "run", "describe", run_id)
    assert described.json()["run_info"]["status"] == "RUN_STATUS_COMPLETED"
    assert "COMPLETED" in (await env.ctl("run", "describe", run_id)).out
    history = await env.ctl("-o", "json", "run", "history", run_id)
    types = [e["event_type"] for e in history.json()]
    assert types[0] == "EVENT_TYPE_RUN_STARTED" and types[-1] == "EVENT_TYPE_RUN_COMPLETED"
    completed = history.json()[-1]["run_completed_event_attributes"]
    assert completed["result"] == [1, 2]  # payloads decoded to their JSON values
    table = await env.ctl("run", "history", run_id)
    assert "RUN_STARTED" in table.out and "BLOCK_COMPLETED" in table.out


async def test_history_follow_shows_events_as_they_happen(env: Env) -> None:
    run_id = _name("run")
    started = await env.ctl("run", "start", env.flow, "--run-id", run_id, "--input", '"hi"')
    assert started.code == 0, started
    process = await asyncio.create_subprocess_exec(
        TIDECTL,
        "--address",
        env.cluster.frontend,
        "-n",
        env.namespace,
        "run",
        "history",
        run_id,
        "--follow",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    seen: list[str] = []
    try:
        while not any("RUN_STARTED" in line for line in seen):
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, f"follow ended early: {seen}"
            seen.append(line.decode())
        assert process.returncode is None  # still following: the run waits for a worker
        async with env.worker():
            rest, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    output = "".join(seen) + rest.decode()
    assert output.index("RUN_STARTED") < output.index("BLOCK_COMPLETED")
    assert output.index("BLOCK_COMPLETED") < output.index("RUN_COMPLETED")


async def test_run_list_filters_by_status(env: Env) -> None:
    async with env.worker():
        done = await env.ctl("-o", "json", "run", "start", env.flow, "--wait")
        assert done.code == 0, done
    done_id = done.json()["run_id"]
    # No worker polls this queue, so the run stays open.
    open_run = await env.ctl("-o", "json", "run", "start", env.flow, "--task-queue", _name("idle"))
    open_id = open_run.json()["run_id"]

    async def listed(*args: str) -> set[str]:
        result = await env.ctl("-o", "json", "run", "list", *args)
        assert result.code == 0, result
        return {r["run"]["run_id"] for r in result.json()}

    for _ in range(50):  # visibility is updated after the commit
        running, completed = await listed("--status", "RUNNING"), await listed("-s", "completed")
        if open_id in running and done_id in completed:
            break
        await asyncio.sleep(0.2)
    assert open_id in running and done_id not in running
    assert done_id in completed and open_id not in completed
    assert {open_id, done_id} <= await listed("--flow", env.flow)
    assert len(await listed("--limit", "1")) == 1
    table = await env.ctl("run", "list", "--status", "RUNNING")
    assert open_id in table.out
    bad = await env.ctl("run", "list", "--status", "SLEEPING")
    assert "unknown run status" in one_line_error(bad, 2)
    await env.ctl("run", "terminate", open_id)


async def test_a_failed_run_prints_its_failure_chain(env: Env) -> None:
    refused = env.tmp / "refused.json"
    flow = _name("refused")
    blueprint = {
        "name": flow,
        "version": 1,
        "blocks": [{"id": "refused", "fail": {"error_type": "Rejected", "message": "no"}}],
    }
    refused.write_text(json.dumps(blueprint))
    assert (await env.ctl("flow", "register", str(refused))).code == 0
    text = await env.ctl("run", "start", flow, "--wait")
    assert "block 'refused' failed: no (FAILED)" in one_line_error(text, 1)
    as_json = await env.ctl("-o", "json", "run", "start", flow, "--wait")
    assert as_json.code == 1, as_json
    failure = as_json.json()["failure"]
    assert failure["block_failure_info"] == {"block_id": "refused"}
    assert failure["cause"]["application_failure_info"]["type"] == "Rejected"


async def test_terminate_then_result_exits_1(env: Env) -> None:
    started = await env.ctl("-o", "json", "run", "start", env.flow)
    run_id = started.json()["run_id"]
    signaled = await env.ctl("run", "signal", run_id, "poke", "--input", '{"a": 1}')
    assert signaled.code == 0, signaled
    terminated = await env.ctl("run", "terminate", run_id, "--reason", "e2e")
    assert terminated.code == 0, terminated
    result = await env.ctl("run", "result", run_id)
    assert "terminated" in one_line_error(result, 1)
    as_json = await env.ctl("-o", "json", "run", "result", run_id)
    assert as_json.code == 1 and as_json.json()["status"] == "TERMINATED"

    canceled = await env.ctl("-o", "json", "run", "start", env.flow)
    cancel_id = canceled.json()["run_id"]
    assert (await env.ctl("run", "cancel", cancel_id, "--reason", "e2e")).code == 0
    timed = await env.ctl("run", "result", cancel_id, "--timeout", "30")
    assert timed.code == 1, timed


async def test_errors_are_one_line_with_exit_codes(env: Env) -> None:
    missing = await env.ctl("run", "describe", "ghost-run")
    assert one_line_error(missing, 3) == (
        f"tidectl: run 'ghost-run' not found in namespace '{env.namespace}'"
    )
    assert (await env.ctl("run", "result", "ghost-run")).code == 3
    assert (await env.ctl("run", "history", "ghost-run", "--follow")).code == 3
    assert (await env.ctl("run", "terminate", "ghost-run")).code == 3

    bad_input = await env.ctl("run", "start", env.flow, "--input", "{nope")
    assert "--input is not valid JSON" in one_line_error(bad_input, 2)
    assert (await env.ctl("run", "start")).code == 2  # usage error
    assert (await env.ctl("run", "start", "ghost-flow")).code == 3

    unreachable = await tidectl("127.0.0.1:1", env.namespace, "run", "list")
    line = one_line_error(unreachable, 4)
    assert "cannot reach the Tideflow server at 127.0.0.1:1" in line


async def test_cluster_and_taskqueue(env: Env) -> None:
    health = await env.ctl("cluster", "health")
    assert health.code == 0, health
    assert "SERVING" in health.out
    assert (await env.ctl("-o", "json", "cluster", "health")).json()["status"] == "SERVING"
    members = await env.ctl("-o", "json", "cluster", "members")
    assert members.code == 0, members
    assert {"frontend", "history", "matching"} <= {m["role"] for m in members.json()}
    shards = await env.ctl("-o", "json", "cluster", "shards")
    assert shards.code == 0 and shards.json()
    assert (await env.ctl("cluster", "shards")).code == 0
    assert (await env.ctl("cluster", "members")).code == 0
    async with env.worker():
        await asyncio.sleep(0.5)
        queue = await env.ctl("-o", "json", "task-queue", "describe", env.queue)
        assert queue.code == 0, queue
        described = queue.json()
        assert described.get("pollers")
        assert described["partitions"]
        text = await env.ctl("task-queue", "describe", env.queue)
        assert text.code == 0 and "limits: partitions" in text.out, text
        assert (await env.ctl("taskqueue", "describe", env.queue)).code == 0  # the first name


async def test_task_queue_config_sets_only_the_options_given(env: Env) -> None:
    queue = env.queue
    first = await env.ctl(
        "-o",
        "json",
        "task-queue",
        "config",
        queue,
        "--rate",
        "50",
        "--burst",
        "10",
        "--partitions",
        "4",
        "--max-concurrency",
        "8",
        "--block-concurrency",
        "ocr@1=3",
        "--block-concurrency",
        "embed@2=1",
        "--fairness-weight",
        "acme=2.5",
        "--in-flight-first",
        "--sticky-timeout",
        "500ms",
    )
    assert first.code == 0, first
    assert first.json() == {
        "rate_per_second": 50.0,
        "burst": 10,
        "partitions": 4,
        "max_concurrency": 8,
        "block_concurrency": {"ocr@1": 3, "embed@2": 1},
        "fairness_weights": {"acme": 2.5},
        "in_flight_first": True,
        "sticky_schedule_to_start": "0.500s",
    }
    # One option: the rest stay as they were.
    second = await env.ctl("-o", "json", "task-queue", "config", queue, "--burst", "5")
    assert second.code == 0, second
    assert second.json() == {**first.json(), "burst": 5}
    text = await env.ctl("task-queue", "config", queue, "--no-in-flight-first")
    assert text.code == 0, text
    assert "rate_per_second" in text.out and "in_flight_first" not in text.out

    bad = await env.ctl("task-queue", "config", queue, "--rate", "-1", "--partitions", "65")
    assert bad.code == 2, bad
    assert "config.rate_per_second" in bad.err and "config.partitions" in bad.err
    malformed = await env.ctl("task-queue", "config", queue, "--block-concurrency", "ocr@1")
    assert malformed.code == 2 and "--block-concurrency" in malformed.err, malformed
    nothing = await env.ctl("task-queue", "config", queue)
    assert nothing.code == 2 and "at least one setting" in nothing.err, nothing

    described = await env.ctl("-o", "json", "task-queue", "describe", queue)
    assert described.code == 0, described
    assert described.json()["config"] == {
        key: value for key, value in second.json().items() if key != "in_flight_first"
    }
    assert described.json()["partitions"][0]["rate_limit_per_second"] == 50.0


async def test_run_signal_completes_a_signal_block_and_describe_shows_the_wait(env: Env) -> None:
    flow = _name("approval")
    blueprint = env.tmp / "approval.json"
    approval = {"id": "approval", "signal": {"signal_name": "approve", "timeout": "600s"}}
    blueprint.write_text(
        json.dumps(
            {
                "name": flow,
                "version": 1,
                "blocks": [approval],
                "output": "${blocks.approval.output}",
            }
        )
    )
    assert (await env.ctl("flow", "register", str(blueprint))).code == 0
    run_id = (await env.ctl("-o", "json", "run", "start", flow)).json()["run_id"]
    described = await env.ctl("-o", "json", "run", "describe", run_id)
    [block] = described.json()["blocks"]
    assert block["waiting"]["signal"]["signal_name"] == "approve"
    assert block["waiting"]["deadline"]
    assert "approve" in (await env.ctl("run", "describe", run_id)).out
    signaled = await env.ctl("run", "signal", run_id, "approve", "--input", '{"ok": true}')
    assert signaled.code == 0, signaled
    result = await env.ctl("-o", "json", "run", "result", run_id, "--timeout", "30")
    assert result.json()["result"] == {"ok": True}
