"""Server configuration, layered: defaults < YAML file < environment (`TIDEFLOW_...`, nested
with `__`, e.g. `TIDEFLOW_PERSISTENCE__BACKEND=postgres`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqliteConfig(_Section):
    path: Path = Path(".tideflow/tideflow.db")
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    busy_timeout_ms: int = Field(default=5000, ge=0)


class PostgresConfig(_Section):
    dsn: str = "postgresql://tideflow@127.0.0.1:5432/tideflow"
    min_connections: int = Field(default=2, ge=1)
    max_connections: int = Field(default=20, ge=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    statement_timeout_s: float = Field(default=30.0, gt=0)


class LimitsConfig(_Section):
    """Size limits the persistence manager enforces before anything is written."""

    max_blob_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    """One serialized history batch, outbox task, backlog task or definition."""
    max_mutable_state_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_history_events: int = Field(default=51_200, gt=0)


class PersistenceConfig(_Section):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite: SqliteConfig = SqliteConfig()
    postgres: PostgresConfig = PostgresConfig()
    limits: LimitsConfig = LimitsConfig()


class ClusterConfig(_Section):
    name: str = "tideflow"
    history_shard_count: int = Field(default=16, gt=0, le=16384)
    """Fixed when the cluster's database is first initialised; later values must match."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TIDEFLOW_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    persistence: PersistenceConfig = PersistenceConfig()
    cluster: ClusterConfig = ClusterConfig()

    yaml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls.yaml_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from defaults, then `config_file` (YAML), then the environment."""
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")

    class _FromFile(Settings):
        yaml_file = config_file

    loaded = _FromFile(**overrides)
    return Settings.model_validate(loaded.model_dump())
