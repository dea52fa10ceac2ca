"""Configuration layering: defaults < YAML file < environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tideflow_server.config import load_settings


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
