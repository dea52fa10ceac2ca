"""Configuration layering: defaults < YAML file < environment."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop
from pydantic import ValidationError

from tideflow_server.config import load_settings
from tideflow_server.history.interpreter import Limits
from tideflow_server.main import run_on_loop
from tideflow_server.server import blueprint_limits


def test_defaults_are_the_embedded_sqlite() -> None:
    settings = load_settings()
    assert settings.persistence.backend == "sqlite"
    assert settings.persistence.sqlite.path == Path(".tideflow/tideflow.db")


def test_yaml_overrides_defaults_and_environment_overrides_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tideflow.yaml"
    config.write_text(
        "persistence:\n  backend: postgres\n  postgres:\n    dsn: postgresql://a@h/db\n"
        "cluster:\n  history_shard_count: 8\n"
    )
    settings = load_settings(config)
    assert settings.persistence.backend == "postgres"
    assert settings.persistence.postgres.dsn == "postgresql://a@h/db"
    assert settings.persistence.postgres.max_connections == 20  # default kept
    monkeypatch.setenv("TIDEFLOW_CLUSTER__HISTORY_SHARD_COUNT", "32")
    assert load_settings(config).cluster.history_shard_count == 32


def test_config_files_layer_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config base.yaml --config persistence.yaml` (deploy/k8s): the later file changes only
    the keys it names, at any depth; the environment still wins over both."""
    base, layer = tmp_path / "base.yaml", tmp_path / "persistence.yaml"
    base.write_text(
        "persistence:\n  backend: postgres\n  postgres:\n    max_connections: 7\n"
        "cluster:\n  history_shard_count: 8\n"
    )
    layer.write_text("persistence:\n  postgres:\n    dsn: postgresql://a@h/db\n")
    settings = load_settings([base, layer])
    assert settings.persistence.backend == "postgres"
    assert settings.persistence.postgres.max_connections == 7
    assert settings.persistence.postgres.dsn == "postgresql://a@h/db"
    assert settings.cluster.history_shard_count == 8
    layer.write_text("cluster:\n  history_shard_count: 16\n")
    assert load_settings([base, layer]).cluster.history_shard_count == 16
    monkeypatch.setenv("TIDEFLOW_PERSISTENCE__POSTGRES__MAX_CONNECTIONS", "9")
    assert load_settings([base, layer]).persistence.postgres.max_connections == 9
    with pytest.raises(FileNotFoundError):
        load_settings([base, tmp_path / "missing.yaml"])


def test_unknown_keys_and_bad_values_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("persistence:\n  backend: mysql\n")
    with pytest.raises(ValidationError, match="backend"):
        load_settings(config)
    config.write_text("persistance:\n  backend: sqlite\n")
    with pytest.raises(ValidationError, match="persistance"):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_the_server_runs_on_uvloop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    async def running_loop() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    settings = load_settings()
    assert settings.services.event_loop == "uvloop"
    assert run_on_loop(settings, running_loop()) is uvloop.Loop
    monkeypatch.setenv("TIDEFLOW_SERVICES__EVENT_LOOP", "asyncio")
    standard = run_on_loop(load_settings(), running_loop())
    assert not issubclass(standard, uvloop.Loop)
    assert issubclass(standard, asyncio.BaseEventLoop)
    monkeypatch.setenv("TIDEFLOW_SERVICES__EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="event_loop"):
        load_settings()


def test_blueprint_settings_are_the_languages_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server hands these to registration and runs by field name; defaults agree.
    assert blueprint_limits(load_settings()) == Limits()
    monkeypatch.setenv("TIDEFLOW_BLUEPRINT__MAX_INLINE_MAP_ITEMS", "50")
    assert blueprint_limits(load_settings()) == Limits(max_inline_map_items=50)
