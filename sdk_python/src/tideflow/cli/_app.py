"""tidectl: namespaces, flows, runs, task queues and the cluster, from a shell.

Exit codes: 0 success, 1 a run ended unsuccessfully, 2 usage or bad input, 3 not found,
4 server unreachable, 5 any other server error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tideflow import errors
from tideflow.api.v1 import (
    common_pb2,
    flow_pb2,
    flow_service_pb2,
    namespace_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
    task_queue_pb2,
)
from tideflow.cli import _render as render
from tideflow.client import Client

T = TypeVar("T")

EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_SERVER = 5

# How long to wait for the server before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0
START_DEV_HINT = "is it running? start one with 'tideflow-server start-dev'"

# Piped output is for scripts and logs: keep table rows (and ids) on one line.
_PIPED_WIDTH = None if sys.stdout.isatty() else 200
stdout = Console(highlight=False, width=_PIPED_WIDTH)
stderr = Console(stderr=True, highlight=False)


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


@dataclass
class Settings:
    address: str
    namespace: str
    api_key: str | None
    output: OutputFormat
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials | bool:
        """TLS credentials when any TLS option is given (the system's roots without a CA)."""
        if self.tls_ca is None and self.tls_cert is None:
            return False
        if (self.tls_cert is None) != (self.tls_key is None):
            fail(EXIT_USAGE, "--tls-cert and --tls-key go together")
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
                private_key=self.tls_key.read_bytes() if self.tls_key else None,
                certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
            )
        except OSError as e:
            fail(EXIT_USAGE, f"cannot read a TLS file: {e}")

    @property
    def json(self) -> bool:
        return self.output is OutputFormat.json


class Exit(Exception):
    """An expected failure: one line for stderr (more may follow) and an exit code."""

    def __init__(self, code: int, message: str, *details: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def fail(code: int, message: str, *details: str) -> NoReturn:
    raise Exit(code, message, *details)


app = typer.Typer(
    name="tidectl",
    help="Administer a Tideflow cluster: namespaces, flows, runs, task queues.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
namespace_app = typer.Typer(help="Create and inspect namespaces.", no_args_is_help=True)
flow_app = typer.Typer(help="Register and inspect flow definitions.", no_args_is_help=True)
run_app = typer.Typer(help="Start, inspect and control runs.", no_args_is_help=True)
taskqueue_app = typer.Typer(help="Inspect and configure task queues.", no_args_is_help=True)
cluster_app = typer.Typer(help="Health, members and shards of the cluster.", no_args_is_help=True)
event_app = typer.Typer(help="Publish events to event blocks.", no_args_is_help=True)
auth_app = typer.Typer(help="API keys (an admin key is needed).", no_args_is_help=True)
key_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
auth_app.add_typer(key_app, name="key")
app.add_typer(namespace_app, name="namespace")
app.add_typer(flow_app, name="flow")
app.add_typer(run_app, name="run")
app.add_typer(taskqueue_app, name="task-queue")
app.add_typer(taskqueue_app, name="taskqueue", hidden=True)  # the name it had first
app.add_typer(cluster_app, name="cluster")
app.add_typer(event_app, name="event")
app.add_typer(auth_app, name="auth")


@app.callback()
def _global(
    ctx: typer.Context,
    *,
    address: Annotated[
        str, typer.Option(envvar="TIDEFLOW_ADDRESS", help="Frontend host:port.")
    ] = "127.0.0.1:7233",
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", envvar="TIDEFLOW_NAMESPACE", help="Namespace.")
    ] = "default",
    api_key: Annotated[
        str | None, typer.Option(envvar="TIDEFLOW_API_KEY", help="API key (Bearer token).")
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="text for people, json for scripts.")
    ] = OutputFormat.text,
    tls_ca: Annotated[
        Path | None,
        typer.Option(envvar="TIDEFLOW_TLS_CA", help="Connect with TLS, trusting this CA (PEM)."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="TIDEFLOW_TLS_CERT", help="Client certificate (PEM), for mTLS."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(envvar="TIDEFLOW_TLS_KEY", help="The client certificate's key (PEM)."),
    ] = None,
) -> None:
    ctx.obj = Settings(
        address=address,
        namespace=namespace,
        api_key=api_key,
        output=output,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def _rpc_failure(settings: Settings, e: errors.RPCError, not_found: str | None) -> Exit:
    if isinstance(e, errors.NotFoundError):
        what = not_found or e.message
        return Exit(EXIT_NOT_FOUND, f"{what} not found in namespace '{settings.namespace}'")
    if isinstance(e, errors.UnavailableError):
        return Exit(
            EXIT_UNAVAILABLE,
            f"cannot reach the Tideflow server at {settings.address} ({START_DEV_HINT})",
        )
    if isinstance(e, errors.InvalidArgumentError):
        return Exit(EXIT_USAGE, f"invalid request: {e.message}", *_violations(e))
    if isinstance(e, errors.UnauthenticatedError | errors.PermissionDeniedError):
        return Exit(EXIT_SERVER, f"{e.message} (check --api-key or TIDEFLOW_API_KEY)")
    return Exit(EXIT_SERVER, f"the server refused: {e.code.name}: {e.message}")


def _violations(e: errors.RPCError) -> list[str]:
    return [f"{v.field}: {v.description}" for v in e.violations]


def call(
    ctx: typer.Context,
    action: Callable[[Client, Settings], Awaitable[T]],
    *,
    not_found: str | None = None,
) -> T:
    """Connect, run `action`, close; expected failures become one line and an exit code."""
    settings = _settings(ctx)

    async def go() -> T:
        try:
            client = await Client.connect(
                settings.address,
                namespace=settings.namespace,
                api_key=settings.api_key,
                tls=settings.credentials(),
                timeout_s=CONNECT_TIMEOUT_S,
            )
        except errors.UnavailableError:
            fail(
                EXIT_UNAVAILABLE,
                f"cannot reach the Tideflow server at {settings.address} ({START_DEV_HINT})",
            )
        client.timeout_s = 30.0
        async with client:
            return await action(client, settings)

    try:
        return asyncio.run(go())
    except errors.RPCError as e:
        _exit(_rpc_failure(settings, e, not_found))
    except Exit as e:
        _exit(e)
    except KeyboardInterrupt:
        _exit(Exit(130, "interrupted"))


def _exit(e: Exit) -> NoReturn:
    stderr.print(f"tidectl: {escape(e.message)}", soft_wrap=True)
    for line in e.details:
        stderr.print(f"  {escape(line)}", soft_wrap=True)
    raise typer.Exit(e.code)


def emit_json(value: Any) -> None:
    print(render.dumps(value), flush=True)


def parse_json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        fail(EXIT_USAGE, f"{option} is not valid JSON: {e}")


def run_input(input: str | None, input_file: Path | None) -> Any:
    if input is not None and input_file is not None:
        fail(EXIT_USAGE, "give --input or --input-file, not both")
    if input_file is not None:
        try:
            text = input_file.read_text()
        except OSError as e:
            fail(EXIT_USAGE, f"cannot read {input_file}: {e.strerror}")
        return parse_json(text, f"--input-file {input_file}")
    return None if input is None else parse_json(input, "--input")


def _guarded(ctx: typer.Context, thunk: Callable[[], T]) -> T:
    try:
        return thunk()
    except Exit as e:
        _exit(e)


# Namespaces.


@namespace_app.command("create")
def namespace_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Namespace to create.")],
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    retention_days: Annotated[float | None, typer.Option(help="Days closed runs are kept.")] = None,
) -> None:
    """Register a new namespace."""

    async def action(client: Client, settings: Settings) -> None:
        try:
            info = await client.register_namespace(
                name, description=description, retention_days=retention_days
            )
        except errors.AlreadyExistsError:
            fail(EXIT_SERVER, f"namespace '{name}' already exists")
        if settings.json:
            emit_json(render.to_dict(info))
        else:
            stdout.print(f"[green]namespace {escape(name)} created[/] (id {info.id})")

    call(ctx, action)


def _namespace_table(namespaces: list[flow_service_pb2.DescribeNamespaceResponse]) -> Table:
    table = Table("name", "state", "retention", "description", "id")
    for ns in namespaces:
        state = namespace_pb2.NamespaceState.Name(ns.info.state)
        retention = ns.config.retention.ToTimedelta() if ns.config.HasField("retention") else "-"
        table.add_row(
            escape(ns.info.name),
            state.removeprefix("NAMESPACE_STATE_"),
            str(retention),
            escape(ns.info.description),
            ns.info.id,
        )
    return table


@namespace_app.command("update")
def namespace_update(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Default: the --namespace.")] = None,
    *,
    retention: Annotated[
        str | None,
        typer.Option(
            help="How long closed runs are kept, e.g. 7d, 12h, 30m (runs that close from now on)."
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
) -> None:
    """Change a namespace's retention or description."""
    target = name or _settings(ctx).namespace

    async def action(client: Client, settings: Settings) -> None:
        kept = None if retention is None else _duration(retention, "--retention")
        if kept is None and description is None:
            fail(EXIT_USAGE, "nothing to change: give --retention or --description")
        try:
            reply = await client.update_namespace(target, retention=kept, description=description)
        except errors.NotFoundError:
            fail(EXIT_NOT_FOUND, f"namespace '{target}' not found")
        if settings.json:
            emit_json(render.to_dict(reply))
        else:
            stdout.print(f"[green]namespace {escape(target)} updated[/]")
            stdout.print(_namespace_table([reply]))

    call(ctx, action)


@namespace_app.command("describe")
def namespace_describe(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Default: the --namespace.")] = None,
) -> None:
    """Show a namespace's info and config."""
    target = name or _settings(ctx).namespace

    async def action(client: Client, settings: Settings) -> None:
        try:
            reply = await client.describe_namespace(target)
        except errors.NotFoundError:
            fail(EXIT_NOT_FOUND, f"namespace '{target}' not found")
        if settings.json:
            emit_json(render.to_dict(reply))
        else:
            stdout.print(_namespace_table([reply]))

    call(ctx, action)


@namespace_app.command("list")
def namespace_list(ctx: typer.Context) -> None:
    """List every namespace."""

    async def action(client: Client, settings: Settings) -> None:
        namespaces = [ns async for ns in client.list_namespaces()]
        if settings.json:
            emit_json([render.to_dict(ns) for ns in namespaces])
        else:
            stdout.print(_namespace_table(namespaces))

    call(ctx, action)


# Flows.


def load_blueprint(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        fail(EXIT_USAGE, f"cannot read blueprint {path}: {e.strerror}")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # noqa: PLC0415 - optional dependency, needed only for YAML files
        except ImportError:
            fail(
                EXIT_USAGE,
                f"reading {path} needs PyYAML (pip install pyyaml); or give the blueprint as JSON",
            )
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            fail(EXIT_USAGE, f"blueprint {path} is not valid YAML: {' '.join(str(e).split())}")
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            fail(EXIT_USAGE, f"blueprint {path} is not valid JSON: {e}")
    if not isinstance(data, dict):
        fail(EXIT_USAGE, f"blueprint {path} must be a mapping (name, version, blocks, ...)")
    return data


@flow_app.command("register")
def flow_register(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Blueprint file, YAML or JSON.")],
) -> None:
    """Register a blueprint flow from a file."""
    blueprint = _guarded(ctx, lambda: load_blueprint(file))

    async def action(client: Client, settings: Settings) -> None:
        try:
            flow = await client.register_flow(blueprint)
        except json_format.ParseError as e:
            fail(EXIT_USAGE, f"blueprint {file} is invalid: {str(e).splitlines()[0]}")
        except errors.InvalidArgumentError as e:
            lines = _violations(e) or [e.message]
            fail(EXIT_USAGE, f"blueprint {file} is invalid: {lines[0]}", *lines[1:])
        if settings.json:
            emit_json(render.to_dict(flow))
        else:
            stdout.print(f"[green]registered {escape(flow.name)}@{flow.version}[/]")

    call(ctx, action)


def _flow_table(flows: list[flow_pb2.FlowDefinition]) -> Table:
    table = Table("name", "version", "task queue", "blocks", "created", "by")
    for flow in flows:
        table.add_row(
            escape(flow.name),
            str(flow.version),
            escape(flow.blueprint.task_queue),
            str(len(flow.blueprint.blocks)),
            render.timestamp(flow.create_time),
            escape(flow.identity),
        )
    return table


@flow_app.command("describe")
def flow_describe(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Flow name.")],
    version: Annotated[int, typer.Option(help="0 = the latest.")] = 0,
) -> None:
    """Show one version of a flow and its blueprint."""

    async def action(client: Client, settings: Settings) -> None:
        flow = await client.describe_flow(name, version=version)
        if settings.json:
            emit_json(render.to_dict(flow))
            return
        stdout.print(_flow_table([flow]))
        stdout.print_json(render.dumps(render.to_dict(flow.blueprint)))

    what = f"flow '{name}'" + (f" version {version}" if version else "")
    call(ctx, action, not_found=what)


@flow_app.command("list")
def flow_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Only versions of this flow.")] = None,
) -> None:
    """List registered flows."""

    async def action(client: Client, settings: Settings) -> None:
        flows = [f async for f in client.list_flows(name=name)]
        if settings.json:
            emit_json([render.to_dict(f) for f in flows])
        else:
            stdout.print(_flow_table(flows))

    call(ctx, action)


# Runs.


async def _wait_result(
    client: Client,
    settings: Settings,
    run_id: str,
    timeout_s: float | None,
    started: dict[str, Any] | None = None,
) -> None:
    """Print the run's result (in JSON, merged into `started`); exit 1 unless it completed."""
    shown = {"run_id": run_id, **(started or {})}
    handle = client.get_run(run_id)
    try:
        if settings.json or not stdout.is_terminal:
            result = await handle.result(timeout=timeout_s)
        else:
            with stdout.status(f"waiting for run {escape(run_id)} to close…"):
                result = await handle.result(timeout=timeout_s)
    except errors.RunFailedError as e:
        if settings.json:
            failed = {**shown, "status": e.status, "error": str(e)}
            if e.failure is not None:  # the whole chain: which block, and what it raised
                failed["failure"] = render.to_dict(e.failure)
            emit_json(failed)
        fail(EXIT_RUN_FAILED, f"{e} ({e.status})")
    except TimeoutError:
        fail(EXIT_SERVER, f"run '{run_id}' is still open after {timeout_s}s")
    if settings.json:
        emit_json({**shown, "status": "COMPLETED", "result": result})
    else:
        stdout.print("[green]COMPLETED[/] result:")
        stdout.print_json(json.dumps(result, default=str))


@run_app.command("start")
def run_start(
    ctx: typer.Context,
    *,
    flow: Annotated[str, typer.Argument(help="Flow name.")],
    input: Annotated[str | None, typer.Option(help="Run input as JSON.")] = None,
    input_file: Annotated[Path | None, typer.Option(help="File holding the input JSON.")] = None,
    run_id: Annotated[str | None, typer.Option(help="Business key; default a new uuid.")] = None,
    version: Annotated[int, typer.Option(help="Flow version; 0 = the latest.")] = 0,
    task_queue: Annotated[str | None, typer.Option(help="Override the task queue.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for and print the result.")] = False,
) -> None:
    """Start a run of a flow."""
    value = _guarded(ctx, lambda: run_input(input, input_file))

    async def action(client: Client, settings: Settings) -> None:
        handle = await client.start_run(
            flow, value, run_id=run_id, version=version, task_queue=task_queue
        )
        started = {
            "run_id": handle.run_id,
            "execution_id": handle.execution_id,
            "started": handle.started,
        }
        if settings.json:
            if not wait:
                emit_json(started)
        else:
            note = "started" if handle.started else "already running"
            stdout.print(
                f"[green]run {escape(handle.run_id)} {note}[/] (execution {handle.execution_id})"
            )
        if wait:
            await _wait_result(client, settings, handle.run_id, None, started)

    call(ctx, action, not_found=f"flow '{flow}'")


@run_app.command("describe")
def run_describe(
    ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="Run id.")]
) -> None:
    """Show a run's status, pending blocks and blocks reached."""

    async def action(client: Client, settings: Settings) -> None:
        reply = await client.get_run(run_id).describe()
        if settings.json:
            emit_json(render.to_dict(reply))
            return
        info = reply.run_info
        status = render.run_status(info.status)
        table = Table(show_header=False, box=None)
        table.add_row("run", escape(info.run.run_id))
        table.add_row("execution", info.run.execution_id)
        table.add_row("flow", f"{escape(info.flow.name)}@{info.flow.version}")
        table.add_row("status", render.styled_status(status))
        table.add_row("task queue", escape(info.task_queue.name))
        table.add_row("started", render.timestamp(info.start_time))
        table.add_row("closed", render.timestamp(info.close_time))
        table.add_row("events", str(info.history_length))
        if info.HasField("parent"):  # a subflow block's child run
            parent = info.parent
            table.add_row(
                "parent",
                escape(f"{parent.run.run_id} ({parent.run.execution_id}), block {parent.block_id}"),
            )
        stdout.print(table)
        if reply.pending_blocks:
            pending = Table("block", "type", "state", "attempt", "scheduled", title="pending")
            for block in reply.pending_blocks:
                state = render.to_dict(block).get("state", "")
                pending.add_row(
                    escape(block.block_id),
                    escape(block.block_type),
                    str(state),
                    render.attempts(block.attempt, block.maximum_attempts),
                    render.timestamp(block.scheduled_time),
                )
            stdout.print(pending)
        if reply.blocks:
            blocks = Table(title="blocks")
            rows = [render.to_dict(b) for b in reply.blocks]
            columns = list(dict.fromkeys(k for row in rows for k in row))
            for column in columns:
                blocks.add_column(column)
            for row in rows:
                blocks.add_row(*(escape(render.compact(row.get(c, ""), 40)) for c in columns))
            stdout.print(blocks)

    call(ctx, action, not_found=f"run '{run_id}'")


@run_app.command("history")
def run_history(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show new events until the run closes.")
    ] = False,
) -> None:
    """Show a run's events (and follow them as they happen)."""

    async def action(client: Client, settings: Settings) -> None:
        events = client.get_run(run_id).history(follow=follow)
        if not follow:
            collected = [e async for e in events]
            if settings.json:
                emit_json([render.to_dict(e) for e in collected])
                return
            table = Table("id", "time", "type", "details")
            for event in collected:
                table.add_row(*render.event_row(event))
            stdout.print(table)
            return
        if settings.json:
            async for event in events:
                print(json.dumps(render.to_dict(event), default=str), flush=True)
            return
        stdout.print("[bold]id    time                     type[/]")
        count = 0
        with stdout.status(f"following run {escape(run_id)}…") as status:
            async for event in events:
                count += 1
                event_id, time, kind, details = render.event_row(event)
                stdout.print(f"{event_id:<5} {time:<24} {kind}  [dim]{details}[/]", soft_wrap=True)
                status.update(f"following run {escape(run_id)}… {count} events")
        stdout.print(f"[bold]run {escape(run_id)} closed[/] after {count} events")

    call(ctx, action, not_found=f"run '{run_id}'")


@run_app.command("result")
def run_result(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Wait for a run to close and print its result (exit 1 if it did not complete)."""

    async def action(client: Client, settings: Settings) -> None:
        await _wait_result(client, settings, run_id, timeout)

    call(ctx, action, not_found=f"run '{run_id}'")


@run_app.command("list")
def run_list(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="RUNNING, COMPLETED, FAILED, ...; repeatable."),
    ] = None,
    flow: Annotated[str | None, typer.Option(help="Only runs of this flow.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many runs.")] = 50,
) -> None:
    """List runs, newest first."""
    statuses = [s.upper().removeprefix("RUN_STATUS_") for s in status or []]
    known = [
        name.removeprefix("RUN_STATUS_")
        for name in (v.name for v in common_pb2.RunStatus.DESCRIPTOR.values)
    ]
    for s in statuses:
        if s not in known or s == "UNSPECIFIED":
            choices = ", ".join(k for k in known if k != "UNSPECIFIED")
            _exit(Exit(EXIT_USAGE, f"unknown run status '{s}' (one of {choices})"))

    async def action(client: Client, settings: Settings) -> None:
        runs = []
        async for info in client.list_runs(statuses=statuses, flow=flow):
            runs.append(info)
            if len(runs) >= limit:
                break
        if settings.json:
            emit_json([render.to_dict(r) for r in runs])
            return
        table = Table("run", "flow", "status", "started", "closed", "events")
        for info in runs:
            table.add_row(
                escape(info.run.run_id),
                f"{escape(info.flow.name)}@{info.flow.version}",
                render.styled_status(render.run_status(info.status)),
                render.timestamp(info.start_time),
                render.timestamp(info.close_time),
                str(info.history_length),
            )
        stdout.print(table)

    call(ctx, action)


@run_app.command("signal")
def run_signal(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    name: Annotated[str, typer.Argument(help="Signal name.")],
    input: Annotated[str | None, typer.Option(help="Signal input as JSON.")] = None,
) -> None:
    """Send a signal to a run."""
    value = _guarded(ctx, lambda: run_input(input, None))

    async def action(client: Client, settings: Settings) -> None:
        await client.get_run(run_id).signal(name, value)
        _done(settings, run_id, f"signal {name} sent to run {run_id}")

    call(ctx, action, not_found=f"run '{run_id}'")


@event_app.command("publish")
def event_publish(
    ctx: typer.Context,
    event_type: Annotated[str, typer.Argument(help="Event type.")],
    key: Annotated[str, typer.Option(help="Correlation key the waiting blocks match.")] = "",
    data: Annotated[str | None, typer.Option(help="Payload as JSON.")] = None,
    id: Annotated[
        str | None, typer.Option("--id", help="Event id (idempotency key); default: a new one.")
    ] = None,
) -> None:
    """Publish an event to the namespace; event blocks waiting for its type and key take it."""
    value = _guarded(ctx, lambda: None if data is None else parse_json(data, "--data"))

    async def action(client: Client, settings: Settings) -> None:
        event_id = await client.publish_event(event_type, value, correlation_key=key, event_id=id)
        if settings.json:
            emit_json({"event_id": event_id, "ok": True})
        else:
            stdout.print(f"[green]event {escape(event_id)} published[/]")

    call(ctx, action)


def _done(settings: Settings, run_id: str, message: str) -> None:
    if settings.json:
        emit_json({"run_id": run_id, "ok": True})
    else:
        stdout.print(f"[green]{escape(message)}[/]")


@run_app.command("cancel")
def run_cancel(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in history.")] = "",
) -> None:
    """Ask a run to cancel (compensations run)."""

    async def action(client: Client, settings: Settings) -> None:
        await client.get_run(run_id).cancel(reason=reason)
        _done(settings, run_id, f"cancel requested for run {run_id}")

    call(ctx, action, not_found=f"run '{run_id}'")


@run_app.command("terminate")
def run_terminate(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in history.")] = "",
) -> None:
    """Close a run at once, without compensation."""

    async def action(client: Client, settings: Settings) -> None:
        await client.get_run(run_id).terminate(reason=reason)
        _done(settings, run_id, f"run {run_id} terminated")

    call(ctx, action, not_found=f"run '{run_id}'")


# Task queues.


@taskqueue_app.command("describe")
def taskqueue_describe(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Task queue name.")]
) -> None:
    """Show a task queue: limits in force, pollers, and per partition its owner, backlog,
    rates, sync-match share, sticky hits and fallbacks."""

    async def action(client: Client, settings: Settings) -> None:
        reply = await client.describe_task_queue(name)
        if settings.json:
            emit_json(render.to_dict(reply))
            return
        stdout.print(f"task queue [bold]{escape(name)}[/]: backlog ~{reply.backlog_count_hint}")
        stdout.print(f"limits: {escape(_limits(reply.config))}")
        pollers = Table("poller", "last access", "rate/s", "warm keys", title="pollers")
        for poller in reply.pollers:
            pollers.add_row(
                escape(poller.identity),
                render.timestamp(poller.last_access_time),
                str(poller.rate_per_second or "-"),
                escape(", ".join(poller.warm_keys) or "-"),
            )
        stdout.print(pollers)
        partitions = Table(
            "partition",
            "owner",
            "backlog",
            "oldest",
            "add/s",
            "dispatch/s",
            "sync",
            "sticky hit/fallback",
            "rate limit/s",
            "in use",
        )
        for p in reply.partitions:
            partitions.add_row(
                str(p.partition),
                escape(p.owner_host),
                str(p.backlog_count_hint),
                f"{p.oldest_task_age.ToMilliseconds() / 1000:.1f}s"
                if p.HasField("oldest_task_age")
                else "-",
                f"{p.tasks_add_rate:.1f}",
                f"{p.tasks_dispatch_rate:.1f}",
                f"{p.sync_match_ratio:.0%}",
                f"{p.sticky_hits}/{p.sticky_fallbacks}",
                f"{p.rate_limit_per_second:g}" if p.rate_limit_per_second else "-",
                str(p.concurrency_in_use),
            )
        stdout.print(partitions)

    call(ctx, action, not_found=f"task queue '{name}'")


EMPTY_KEY = "(empty)"


def _limits(config: task_queue_pb2.TaskQueueConfig) -> str:
    parts = [f"partitions {config.partitions or 'default'}"]
    if config.rate_per_second:
        parts.append(f"rate {config.rate_per_second:g}/s burst {config.burst or 'default'}")
    if config.max_concurrency:
        parts.append(f"concurrency {config.max_concurrency}")
    parts += [f"{t} concurrency {n}" for t, n in sorted(config.block_concurrency.items())]
    if config.fairness_weights:
        weights = ", ".join(
            f"{key or EMPTY_KEY}={w:g}" for key, w in sorted(config.fairness_weights.items())
        )
        parts.append(f"fairness weights {weights}")
    if config.in_flight_first:
        parts.append("in-flight first")
    if config.HasField("sticky_schedule_to_start"):
        parts.append(f"sticky wait {config.sticky_schedule_to_start.ToMilliseconds() / 1000:g}s")
    return "; ".join(parts)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def _pairs(values: list[str], option: str, parse: Callable[[str], T]) -> dict[str, T]:
    """KEY=VALUE options into a map; a malformed one is a usage error naming `option`."""
    parsed: dict[str, T] = {}
    for item in values:
        key, sep, text = item.rpartition("=")
        try:
            if not sep or not key:
                raise ValueError("expected KEY=VALUE")
            parsed[key] = parse(text)
        except ValueError as e:
            fail(EXIT_USAGE, f"{option} {item!r}: {e}")
    return parsed


def _duration(text: str, option: str) -> timedelta:
    for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            with contextlib.suppress(ValueError):
                return timedelta(seconds=float(text[: -len(unit)]) * _DURATION_UNITS[unit])
            break
    fail(EXIT_USAGE, f"{option} {text!r}: expected a duration such as 2s, 500ms, 1m, 12h or 7d")


@taskqueue_app.command("config")
def taskqueue_config(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Task queue name.")],
    *,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Dispatch rate limit, tasks/s (0 = none).")
    ] = None,
    burst: Annotated[
        int | None, typer.Option("--burst", help="Tasks at once after idling (0 = the rate).")
    ] = None,
    partitions: Annotated[
        int | None, typer.Option("--partitions", help="Partitions (0 = the default, 4).")
    ] = None,
    max_concurrency: Annotated[
        int | None,
        typer.Option("--max-concurrency", help="Started, unfinished tasks at once (0 = none)."),
    ] = None,
    block_concurrency: Annotated[
        list[str] | None,
        typer.Option(
            "--block-concurrency", help="TYPE=N per block type, e.g. ocr@1=3; repeat for more."
        ),
    ] = None,
    fairness_weight: Annotated[
        list[str] | None,
        typer.Option("--fairness-weight", help="KEY=W per fairness key; repeat for more."),
    ] = None,
    in_flight_first: Annotated[
        bool | None,
        typer.Option(
            "--in-flight-first/--no-in-flight-first",
            help="Started runs' blocks before new runs' first blocks.",
        ),
    ] = None,
    sticky_timeout: Annotated[
        str | None,
        typer.Option("--sticky-timeout", help="Sticky schedule-to-start, e.g. 2s or 500ms."),
    ] = None,
) -> None:
    """Set a task queue's limits and routing (only the options given) and print the config
    now in force."""

    async def action(client: Client, settings: Settings) -> None:
        # Parsed here, inside `call`, so that a malformed option is a usage error line.
        sticky = None if sticky_timeout is None else _duration(sticky_timeout, "--sticky-timeout")
        blocks = (
            None
            if block_concurrency is None
            else _pairs(block_concurrency, "--block-concurrency", int)
        )
        weights = (
            None if fairness_weight is None else _pairs(fairness_weight, "--fairness-weight", float)
        )
        try:
            config = await client.update_task_queue_config(
                name,
                rate_per_second=rate,
                burst=burst,
                partitions=partitions,
                max_concurrency=max_concurrency,
                block_concurrency=blocks,
                fairness_weights=weights,
                in_flight_first=in_flight_first,
                sticky_schedule_to_start=sticky,
            )
        except ValueError as e:
            fail(EXIT_USAGE, str(e))
        if settings.json:
            emit_json(render.to_dict(config))
            return
        stdout.print(f"task queue [bold]{escape(name)}[/]: config in force")
        table = Table("setting", "value")
        for setting, value in render.to_dict(config).items():
            table.add_row(setting, escape(json.dumps(value)))
        stdout.print(table)

    call(ctx, action, not_found=f"task queue '{name}'")


# Cluster.

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _health_status(reply: bytes) -> str:
    # HealthCheckResponse is a single enum field (1, varint); the empty message means UNKNOWN.
    if len(reply) >= 2 and reply[0] == 0x08:
        return _HEALTH_STATUS.get(reply[1], str(reply[1]))
    return "UNKNOWN"


def _operator(client: Client) -> operator_service_pb2_grpc.OperatorServiceAsyncStub:
    return operator_service_pb2_grpc.OperatorServiceStub(client._channel)


@cluster_app.command("health")
def cluster_health(ctx: typer.Context) -> None:
    """Check the frontend with grpc.health.v1 (exit 4 unless SERVING)."""

    async def action(client: Client, settings: Settings) -> str:
        check = client._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )
        try:
            reply: bytes = await check(b"", timeout=CONNECT_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            raise errors.from_grpc(e) from e
        status = _health_status(reply)
        info = await client._call(
            _operator(client).GetClusterInfo, operator_service_pb2.GetClusterInfoRequest()
        )
        if settings.json:
            emit_json({"address": settings.address, "status": status, **render.to_dict(info)})
        else:
            style = "green" if status == "SERVING" else "red"
            stdout.print(f"{settings.address}: [{style}]{status}[/]")
            stdout.print(
                f"cluster {escape(info.cluster_name)} (server {escape(info.server_version)}), "
                f"{info.history_shard_count} shards, persistence {info.persistence_backend}, "
                f"visibility {info.visibility_backend}"
            )
        return status

    if call(ctx, action) != "SERVING":
        raise typer.Exit(EXIT_UNAVAILABLE)


@cluster_app.command("members")
def cluster_members(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(help="frontend, history or matching; default all.")] = "",
) -> None:
    """List the cluster's processes by role."""

    async def action(client: Client, settings: Settings) -> None:
        request = operator_service_pb2.ListClusterMembersRequest(role=role)
        reply = await client._call(_operator(client).ListClusterMembers, request)
        if settings.json:
            emit_json([render.to_dict(m) for m in reply.members])
            return
        table = Table("role", "host", "address", "session start", "last heartbeat")
        for m in reply.members:
            table.add_row(
                m.role,
                escape(m.host_id),
                escape(m.rpc_address),
                render.timestamp(m.session_start_time),
                render.timestamp(m.last_heartbeat_time),
            )
        stdout.print(table)

    call(ctx, action)


@cluster_app.command("shards")
def cluster_shards(ctx: typer.Context) -> None:
    """List the history shards and their owners."""

    async def action(client: Client, settings: Settings) -> None:
        shards: list[operator_service_pb2.ShardSummary] = []
        request = operator_service_pb2.ListShardsRequest()
        while True:
            reply = await client._call(_operator(client).ListShards, request)
            shards.extend(reply.shards)
            if not reply.next_page_token:
                break
            request.next_page_token = reply.next_page_token
        if settings.json:
            emit_json([render.to_dict(s) for s in shards])
            return
        table = Table("shard", "owner", "range id")
        for s in shards:
            table.add_row(
                str(s.shard_id), escape(s.owner_host) or "[red]unowned[/]", str(s.range_id)
            )
        stdout.print(table)

    call(ctx, action)


def main() -> None:
    """The tidectl entry point."""
    app(prog_name="tidectl")


# API keys.


class KeyRole(StrEnum):
    admin = "admin"
    writer = "writer"
    reader = "reader"
    worker = "worker"


def _key_row(info: operator_service_pb2.ApiKeyInfo) -> list[str]:
    role = operator_service_pb2.ApiKeyRole.Name(info.role).removeprefix("API_KEY_ROLE_").lower()
    revoked = render.timestamp(info.revoke_time) if info.HasField("revoke_time") else ""
    return [
        info.key_id,
        escape(info.namespace),
        role,
        escape(", ".join(info.task_queues)),
        render.timestamp(info.create_time),
        revoked,
        escape(info.description),
    ]


def _key_table(keys: list[operator_service_pb2.ApiKeyInfo]) -> Table:
    table = Table("key id", "namespace", "role", "task queues", "created", "revoked", "description")
    for info in keys:
        table.add_row(*_key_row(info))
    return table


@key_app.command("create")
def key_create(
    ctx: typer.Context,
    role: Annotated[KeyRole, typer.Option(help="What the key may do.")],
    task_queue: Annotated[
        list[str] | None, typer.Option(help="A worker key's task queue (repeat; default all).")
    ] = None,
    description: Annotated[str, typer.Option(help="Whose key, what for.")] = "",
    cluster: Annotated[
        bool, typer.Option("--cluster", help="A cluster key (every namespace), not -n's.")
    ] = False,
) -> None:
    """Make a key for the namespace (-n) and print it: it is shown only now."""

    async def action(client: Client, settings: Settings) -> None:
        info, key = await client.create_api_key(
            role=role.value,
            namespace="*" if cluster else settings.namespace,
            task_queues=task_queue or [],
            description=description,
        )
        if settings.json:
            emit_json({**render.to_dict(info), "key": key})
            return
        stderr.print(
            f"key {info.key_id} ({role.value}, namespace '{escape(info.namespace)}'); "
            "store it now, the server keeps only its hash:"
        )
        stdout.print(key, soft_wrap=True)

    call(ctx, action)


@key_app.command("list")
def key_list(
    ctx: typer.Context,
    cluster: Annotated[bool, typer.Option("--cluster", help="The cluster keys.")] = False,
) -> None:
    """List the namespace's keys (-n), revoked ones included; never their secrets."""

    async def action(client: Client, settings: Settings) -> None:
        keys = await client.list_api_keys(namespace="*" if cluster else settings.namespace)
        if settings.json:
            emit_json([render.to_dict(k) for k in keys])
        else:
            stdout.print(_key_table(keys))

    call(ctx, action)


@key_app.command("revoke")
def key_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after 'tfk.').")],
    cluster: Annotated[bool, typer.Option("--cluster", help="A cluster key.")] = False,
) -> None:
    """Revoke a key: it authenticates nothing from now on."""

    async def action(client: Client, settings: Settings) -> None:
        info = await client.revoke_api_key(key_id, namespace="*" if cluster else settings.namespace)
        if settings.json:
            emit_json(render.to_dict(info))
        else:
            stdout.print(f"key {info.key_id} revoked")

    call(ctx, action, not_found=f"API key {key_id}")
