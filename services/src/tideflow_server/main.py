"""`tideflow-server`: the server's command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tideflow.api.v1 import namespace_pb2
from tideflow_server import observability
from tideflow_server.auth import CLUSTER, ApiKeys, Role
from tideflow_server.config import Settings, load_settings
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import schema
from tideflow_server.persistence.errors import AlreadyExists, NotFound, PersistenceError
from tideflow_server.persistence.factory import open_persistence, schema_databases
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.server import ROLES, TideflowServer, serve_until_signalled
from tideflow_server.telemetry import configure_logging

if sys.platform != "win32":
    import uvloop  # not built for Windows: the standard event loop serves there

T = TypeVar("T")


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop the settings ask for (the standard one on Windows, which uvloop lacks)."""
    if settings.services.event_loop == "uvloop" and sys.platform != "win32":
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_on_loop(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on the event loop the settings ask for."""
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        return runner.run(main)


async def _schema(settings: Settings, action: str) -> str:
    persistence = await open_persistence(settings.persistence)
    try:
        return "\n".join([await _schema_one(db, action) for db in schema_databases(persistence)])
    finally:
        await persistence.close()


async def _schema_one(db: schema.SchemaDatabase, action: str) -> str:
    if action == "setup":
        version = await schema.setup_schema(db)
        return f"{db.name}: schema set up at v{version}"
    if action == "update":
        applied = await schema.update_schema(db)
        if not applied:
            return f"{db.name}: schema is current at v{await schema.current_version(db)}"
        return f"{db.name}: applied schema " + ", ".join(f"v{v}" for v in applied)
    found = await schema.current_version(db)
    latest = schema.load_versions(db.name)[-1].version
    return f"{db.name}: database v{found or 'none'}, server v{latest}"


async def _ensure_namespace(server: TideflowServer, name: str) -> None:
    """start-dev only: a namespace to use right away, as a new user expects."""
    persistence = server.persistence
    manager = PersistenceManager(persistence, server.settings.persistence.limits)
    try:
        await manager.get_namespace(name=name)
    except NotFound:
        record = records_pb2.NamespaceRecord()
        record.info.name = name
        record.info.id = str(uuid.uuid4())
        record.info.state = namespace_pb2.NAMESPACE_STATE_REGISTERED
        record.info.description = "created by tideflow-server start-dev"
        record.config.retention.FromSeconds(24 * 3600)
        record.create_time.GetCurrentTime()
        with contextlib.suppress(AlreadyExists):
            await manager.create_namespace(record)


async def _start_dev(settings: Settings, namespace: str) -> None:
    server = TideflowServer(settings, ROLES)

    async def started() -> None:
        await _ensure_namespace(server, namespace)
        print(
            f"tideflow dev server: frontend at {server.address('frontend')}, "
            f"{settings.persistence.sqlite.path} (namespace {namespace!r}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )

    await serve_until_signalled(server, setup_schema=True, on_started=started)


async def _create_key(settings: Settings, args: argparse.Namespace) -> str:
    """A key written straight to the database: the first cluster admin key (or one for when
    no admin key is at hand). Prints the key, which is shown only here."""
    persistence = await open_persistence(settings.persistence)
    try:
        await schema.check_schema(schema_databases(persistence)[0])
        if args.namespace != CLUSTER:
            await persistence.metadata.get_namespace_by_name(args.namespace)
        info, key = await ApiKeys(persistence.metadata).create(
            namespace=args.namespace,
            role=Role[args.role.upper()],
            task_queues=args.task_queue or [],
            description=args.description,
        )
    finally:
        await persistence.close()
    print(
        f"key id {info.key_id} ({args.role}, namespace {args.namespace!r}); the key, shown "
        "only now:",
        file=sys.stderr,
    )
    return key


def _config_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config",
        type=Path,
        action="append",
        help="YAML config (deploy/config/*.yaml); again to layer more, later files win",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tideflow-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    schema_cmd = commands.add_parser("schema", help="set up or update the database schema")
    schema_cmd.add_argument("action", choices=["setup", "update", "version"])
    _config_option(schema_cmd)

    start = commands.add_parser("start", help="run some or all roles on a configured backend")
    _config_option(start)
    start.add_argument(
        "--roles",
        default=",".join(ROLES),
        help="comma-separated subset of frontend,history,matching (default: all)",
    )
    start.add_argument("--log-json", action="store_true", help="log one JSON object a line")

    auth = commands.add_parser("auth", help="API keys, straight in the database")
    auth_commands = auth.add_subparsers(dest="auth_command", required=True)
    create = auth_commands.add_parser(
        "create-key", help="make an API key (the first cluster admin key, say) and print it"
    )
    _config_option(create)
    create.add_argument("--namespace", default=CLUSTER, help="a namespace, or '*' (cluster)")
    create.add_argument("--role", choices=[r.label for r in Role], default="admin")
    create.add_argument("--task-queue", action="append", help="a worker key's queue (repeat)")
    create.add_argument("--description", default="")

    dev = commands.add_parser(
        "start-dev", help="all roles in one process on SQLite, schema and namespace created"
    )
    dev.add_argument("--db", type=Path, default=Path(".tideflow/tideflow.db"))
    dev.add_argument("--port", type=int, default=7233, help="frontend port")
    dev.add_argument("--namespace", default="default", help="namespace to create if missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "schema":
            settings = load_settings(args.config)
            print(run_on_loop(settings, _schema(settings, args.action)))
        elif args.command == "auth":
            settings = load_settings(args.config)
            print(run_on_loop(settings, _create_key(settings, args)))
        elif args.command == "start":
            configure_logging(
                level=os.environ.get("TIDEFLOW_LOG_LEVEL", "INFO"), json=args.log_json
            )
            settings = load_settings(args.config)
            roles = [r.strip() for r in args.roles.split(",") if r.strip()]
            observability.configure(
                settings.telemetry,
                service="tideflow-server",
                instance=f"{'+'.join(roles)}@{socket.gethostname()}:{os.getpid()}",
            )
            run_on_loop(settings, serve_until_signalled(TideflowServer(settings, roles)))
        else:
            configure_logging()
            settings = load_settings(
                None,
                persistence={"backend": "sqlite", "sqlite": {"path": str(args.db)}},
                services={
                    "frontend": {"port": args.port},
                    "history": {"port": 0},
                    "matching": {"port": 0},
                },
                cluster={"name": "tideflow-dev", "history_shard_count": 4},
            )
            run_on_loop(settings, _start_dev(settings, args.namespace))
    except (schema.SchemaError, PersistenceError, FileNotFoundError, ValueError, OSError) as e:
        print(f"tideflow-server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
