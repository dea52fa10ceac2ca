"""`tideflow-server`: the server's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tideflow_server.config import Settings, load_settings
from tideflow_server.persistence import schema
from tideflow_server.persistence.errors import PersistenceError
from tideflow_server.persistence.factory import open_persistence


async def _schema(settings: Settings, action: str) -> str:
    persistence = await open_persistence(settings.persistence)
    try:
        db = persistence.db
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
    finally:
        await persistence.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tideflow-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    schema_cmd = commands.add_parser("schema", help="set up or update the database schema")
    schema_cmd.add_argument("action", choices=["setup", "update", "version"])
    schema_cmd.add_argument("--config", type=Path, help="YAML config (deploy/config/*.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        print(asyncio.run(_schema(settings, args.action)))
    except (schema.SchemaError, PersistenceError, FileNotFoundError) as e:
        print(f"tideflow-server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
