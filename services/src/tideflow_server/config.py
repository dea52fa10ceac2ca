"""Server configuration, layered: defaults < YAML files, in order < environment (`TIDEFLOW_...`,
nested with `__`, e.g. `TIDEFLOW_PERSISTENCE__BACKEND=postgres`). Files merge key by key at
every depth, so a later one (say a deployment's `persistence.yaml`) changes only what it
names of an earlier one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
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
    group_commit_calls: int = Field(default=2, ge=0)
    """Group commit of a history host's decisions: statements in flight at most, each
    carrying every decision that came while the others were busy (0: one per decision)."""


class CassandraConfig(_Section):
    contact_points: list[str] = ["127.0.0.1"]
    port: int = Field(default=9042, gt=0, le=65535)
    keyspace: str = Field(default="tideflow", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
    replication: dict[str, str | int] = {"class": "SimpleStrategy", "replication_factor": 1}
    """Used when `schema setup` creates the keyspace, e.g.
    {"class": "NetworkTopologyStrategy", "dc1": 3}."""
    local_dc: str | None = None
    consistency: Literal["LOCAL_QUORUM", "QUORUM", "LOCAL_ONE", "ONE", "EACH_QUORUM", "ALL"] = (
        "LOCAL_QUORUM"
    )
    serial_consistency: Literal["LOCAL_SERIAL", "SERIAL"] = "LOCAL_SERIAL"
    username: str | None = None
    password: str | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    group_commit: bool = True
    """Group commit of a history host's writes: a shard's concurrent decisions and new runs
    go as one conditional batch, one at a time per shard (off: one batch per write)."""


class VisibilityConfig(_Section):
    """Where visibility lives when the main backend has no SQL (Cassandra)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite: SqliteConfig = SqliteConfig(path=Path(".tideflow/visibility.db"))
    postgres: PostgresConfig = PostgresConfig()


class LimitsConfig(_Section):
    """Size limits the persistence manager enforces before anything is written."""

    max_blob_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    """One serialized outbox task, backlog task or flow definition."""
    max_history_batch_bytes: int = Field(default=6 * 1024 * 1024, gt=0)
    """The events one step appends, serialized (stored as one batch). Blocks copy the values
    they take into their own events, so a step carries a value more than once: a run's start
    holds its input, then the input of each block it schedules. The default takes a payload
    at the frontend's limit (2 MiB) twice with room to spare, so a run whose first block takes
    the whole input starts; a step over it is refused, naming the request field and this
    setting."""
    max_mutable_state_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_history_events: int = Field(default=51_200, gt=0)


LIMITS_SECTION: Final = "persistence.limits"
"""Where LimitsConfig sits in the settings (YAML keys; TIDEFLOW_PERSISTENCE__LIMITS__* in the
environment), for errors that name a limit's setting."""


class FaultsConfig(_Section):
    """Faults injected into the stores (persistence/faults.py), for tests. Empty by default,
    and then the stores are not wrapped at all."""

    lose_create_reply_run_ids: tuple[str, ...] = ()
    """Run id prefixes: an execution create of such a run commits, then fails as if the
    database's reply were lost (outcome unknown), as a history host that dies right after
    the commit would look to the frontend."""
    hold_retry_commit_run_ids: tuple[str, ...] = ()
    """Run id prefixes: the first commit of such a run that schedules a block's retry fails
    as if its reply were lost and is held, landing only when the next fence or write reaches
    its shard, as a Cassandra lightweight transaction left accepted but uncommitted does (a
    read meanwhile sees the run as it was)."""


class PersistenceConfig(_Section):
    backend: Literal["sqlite", "postgres", "cassandra"] = "sqlite"
    sqlite: SqliteConfig = SqliteConfig()
    postgres: PostgresConfig = PostgresConfig()
    cassandra: CassandraConfig = CassandraConfig()
    visibility: VisibilityConfig = VisibilityConfig()
    """Only read with `backend: cassandra`."""
    limits: LimitsConfig = LimitsConfig()
    faults: FaultsConfig = FaultsConfig()


class ClusterConfig(_Section):
    name: str = "tideflow"
    history_shard_count: int = Field(default=16, gt=0, le=16384)
    """Fixed when the cluster's database is first initialised; later values must match."""


class RoleEndpoint(_Section):
    """Where one role listens. Port 0 picks a free port (tests); `advertise` is the address
    other hosts dial (defaults to host:port as bound)."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    advertise: str | None = None


class ServicesConfig(_Section):
    frontend: RoleEndpoint = RoleEndpoint(port=7233)
    history: RoleEndpoint = RoleEndpoint(port=7234)
    matching: RoleEndpoint = RoleEndpoint(port=7235)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The server process's event loop: uvloop (libuv, cheaper callbacks and I/O) or the
    standard library's. Windows, where uvloop is not built, always gets the standard one."""


class MembershipConfig(_Section):
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    """How often a host refreshes its membership row and re-reads the others'."""
    ttl_s: float = Field(default=10.0, gt=0)
    """A host that has not heartbeated for this long is gone; its shards move."""


class HistoryConfig(_Section):
    cache_size: int = Field(default=10_000, gt=0)
    """Mutable states cached per shard."""
    transfer_batch: int = Field(default=100, gt=0)
    timer_lookahead_s: float = Field(default=30.0, gt=0)
    ack_interval_s: float = Field(default=1.0, gt=0)
    """How often queue ack levels are persisted and completed tasks deleted."""
    max_pending_blocks: int = Field(default=2_000, gt=0)
    deletions_in_flight: int = Field(default=8, gt=0)
    """Closed runs a history host deletes at once when their retention ends
    (history/tasks/retention.py): a backlog of due deletions (after an outage, or a retention
    shortened) drains at this pace rather than crowding out the runs being decided."""
    max_pending_children: int = Field(default=1_000, gt=0)
    """Child runs of subflow blocks open at once per run; a subflow block that would start
    one more fails (PendingChildrenLimitExceeded, catchable) instead."""
    long_poll_timeout_s: float = Field(default=20.0, gt=0)
    """GetRunHistory with wait_new_event: how long a call waits for a new event (with
    CLOSE_EVENT, for the close) before it answers without one. Like every long poll, it
    answers sooner, up to two seconds before the caller's deadline, when that comes first. The
    frontend reads it too."""
    wait_for_close_timeout_s: float = Field(default=20.0, gt=0)
    """StartRun with wait_for_close: how long the call waits for the run to close before it
    answers without the close event (sooner before the caller's deadline). The frontend reads
    it too."""
    direct_dispatch: bool = True
    """Start a block in the commit that schedules it, so that a poll waiting in matching
    takes it without RecordBlockStarted (history/shard/direct.py)."""
    redispatch_after_s: float = Field(default=60.0, gt=0)
    """A block attempt that no poll has started this long after it became dispatchable has
    its task sent to matching again, by the run's block timer (history/blocks.py), so that a
    task lost on the way (whatever the bug) cannot strand the run. The wait doubles after
    each resend, up to `redispatch_max_interval_s`: a block waiting in a long backlog gets a
    few duplicate pointers, which RecordBlockStarted drops, not one per interval."""
    redispatch_max_interval_s: float = Field(default=600.0, gt=0)
    """The longest wait between two resends of one attempt's task."""
    max_buffered_signals: int = Field(default=1_000, gt=0)
    """Signals a run keeps that no signal block has taken yet: a SignalRun that would keep
    more is refused (RESOURCE_EXHAUSTED, reason BUFFERED_SIGNALS_LIMIT) and records nothing."""
    max_event_waits: int = Field(default=1_000, gt=0)
    """Event blocks of one run waiting at once; an event block that would be one more fails
    (EventWaitsLimitExceeded, catchable) instead."""
    max_kept_event_matches: int = Field(default=100, gt=0)
    """When an event block starts waiting: how many kept events of its type and key (oldest
    first) it is offered before it waits for new ones only."""


class BlueprintConfig(_Section):
    """Bounds of the blueprint language (invariant 6). Registration (frontend) checks the
    first two; runs (history) the others. The errors name these settings."""

    max_nesting_depth: int = Field(default=4, gt=0)
    """Containers (map, loop) inside containers."""
    max_loop_iterations: int = Field(default=1_000, gt=0)
    """The largest `max_iterations` a loop block may set."""
    max_inline_map_items: int = Field(default=1_000, gt=0)
    """Items a map block runs in its run's history; a map given more fails, unless it sets
    `child_runs` (then `max_child_map_items` bounds it)."""
    max_child_map_items: int = Field(default=100_000, gt=0)
    """Items a map block with `child_runs` runs, each as a child run; a map given more
    fails."""
    default_map_concurrency: int = Field(default=100, gt=0)
    """Items in flight at once for a map block that sets no `max_concurrency`."""


class MatchingRoleConfig(_Section):
    long_poll_timeout_s: float = Field(default=60.0, gt=0)
    """PollBlockTask: how long a poll waits for a task before it is answered empty (sooner
    before the caller's deadline). The frontend reads it too."""
    max_polls_per_partition: int = Field(default=1_000, gt=0)
    sync_match_wait_s: float = Field(default=0.2, ge=0)
    """How long a new task with no poll waiting waits in memory for one before it is
    persisted to the backlog; 0 persists it at once."""
    config_refresh_s: float = Field(default=5.0, gt=0)
    """How often a task queue partition other than the root re-reads the queue's config
    (UpdateTaskQueueConfig) from the root's row, in case it missed the root's push."""

    config_cache_ttl_s: float = Field(default=5.0, gt=0)
    """History and the frontend learn a task queue's partition count (its config, in the root
    partition's row) at most this often per queue; a change reaches them within this."""

    fair_window: int = Field(default=10_000, gt=0)
    """Backlog tasks a partition reads ahead into memory, a pointer of a few hundred bytes
    each, for priority and fairness to order: a task further back in the backlog than this
    waits for the tasks before it to go, whatever its priority or fairness key."""

    sticky_poller_gone_s: float = Field(default=3.0, ge=0)
    """A worker's sticky queue with no poll outstanding for this long is taken for gone: an
    `affinity: run` task for it goes to the normal queue at once rather than after the sticky
    timeout."""

    affinity_live_s: float = Field(default=5.0, gt=0)
    """Key affinity: a worker with no poll outstanding on a queue still owns its keys this long
    after its last poll; then (a stopped worker) its keys move to the queue's other workers."""


class FrontendConfig(_Section):
    namespace_rps: float = Field(default=2_400.0, ge=0)
    """Requests per second per namespace when its config sets none; 0 = unlimited."""
    namespace_burst: int = Field(default=4_800, ge=0)


class EventsConfig(_Section):
    """Published events (FlowService.PublishEvent)."""

    retention_s: float = Field(default=7 * 86_400.0, gt=0)
    """How long a namespace keeps a published event for event blocks that start waiting
    later; then it is deleted (by TTL on Cassandra)."""
    expire_interval_s: float = Field(default=60.0, gt=0)
    """A frontend deletes expired events at most this often (on a publish), in batches."""
    expire_batch: int = Field(default=1_000, gt=0)
    """Expired events deleted per batch."""
    max_waits_per_publish: int = Field(default=1_000, gt=0)
    """Waiting event blocks one publish delivers to; more are not reached by that publish
    (the response's `delivered` says how many were)."""


class TaskTokenKey(_Section):
    """One key that signs task tokens (HMAC-SHA256)."""

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """Named in each token it signs, so that a token finds its key after a rotation."""
    secret: SecretStr = Field(min_length=32)


class AuthConfig(_Section):
    enabled: bool = False
    """Every public call must carry an API key (metadata `authorization: Bearer <key>`) of
    the namespace it acts on, with a role that allows it (frontend/rules.py). Off for
    `start-dev`; the production configs in deploy/config turn it on."""
    key_cache_s: float = Field(default=5.0, ge=0)
    """How long a frontend trusts a key it has looked up: a key revoked through another
    frontend stops working within this (at once on the frontend that revoked it)."""


class TlsConfig(_Section):
    """TLS of one listening port. With `cert_file` and `key_file` the port serves TLS only;
    with `client_ca_file` too, it accepts only clients with a certificate that CA signed."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file")
        return self


class InternalTlsConfig(_Section):
    """Mutual TLS between the roles (history and matching ports, and the calls every role
    makes to them): each role presents `cert_file`, and trusts only peers whose certificate
    `ca_file` signed. All three or none."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    server_name: str | None = None
    """The name the roles' certificates carry, checked on every internal call; by default
    the host of the address dialled."""

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _all(self) -> InternalTlsConfig:
        given = [self.cert_file, self.key_file, self.ca_file]
        if any(f is not None for f in given) and not all(f is not None for f in given):
            raise ValueError("internal TLS takes cert_file, key_file and ca_file together")
        return self


class SecurityConfig(_Section):
    task_token_keys: list[TaskTokenKey] = []
    """The first signs new task tokens; every one listed verifies them. Rotate by listing a
    new key first and keeping the old one until the tokens it signed are done (their blocks'
    timeouts). Empty: the cluster's own key, generated into its database on first start."""
    auth: AuthConfig = AuthConfig()
    public_tls: TlsConfig = TlsConfig()
    """The frontend's port (clients, workers, tidectl)."""
    internal_tls: InternalTlsConfig = InternalTlsConfig()

    @model_validator(mode="after")
    def _unique_keys(self) -> SecurityConfig:
        ids = [k.id for k in self.task_token_keys]
        if len(ids) != len(set(ids)):
            raise ValueError("task_token_keys: each id once")
        return self


class TracingConfig(_Section):
    """Spans of every RPC, history decision, persistence call and dispatch, exported over
    OTLP. Off until an endpoint is set."""

    otlp_endpoint: str | None = None
    """Where spans go: host:port for `grpc`, a URL (http://host:4318/v1/traces) for `http`."""
    otlp_protocol: Literal["grpc", "http"] = "grpc"
    sample_ratio: float = Field(default=0.01, ge=0, le=1)
    """Of the traces that start here (a call without a sampled parent); a caller's sampled
    `traceparent` is always followed."""
    export_delay_ms: int = Field(default=5_000, gt=0)
    """How long finished spans wait to go out in one batch."""

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None


class MetricsConfig(_Section):
    prometheus_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve /metrics (Prometheus text) on this port of every server process; 0 picks a
    free one (logged); None: no metrics."""
    prometheus_host: str = "127.0.0.1"


class TelemetryConfig(_Section):
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TIDEFLOW_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    persistence: PersistenceConfig = PersistenceConfig()
    cluster: ClusterConfig = ClusterConfig()
    services: ServicesConfig = ServicesConfig()
    membership: MembershipConfig = MembershipConfig()
    history: HistoryConfig = HistoryConfig()
    blueprint: BlueprintConfig = BlueprintConfig()
    matching: MatchingRoleConfig = MatchingRoleConfig()
    frontend: FrontendConfig = FrontendConfig()
    events: EventsConfig = EventsConfig()
    security: SecurityConfig = SecurityConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    yaml_files: ClassVar[tuple[Path, ...]] = ()

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
        if cls.yaml_files:
            sources.append(
                YamlConfigSettingsSource(settings_cls, yaml_file=cls.yaml_files, deep_merge=True)
            )
        return tuple(sources)


def load_settings(config_files: Path | Sequence[Path] | None = None, **overrides: Any) -> Settings:
    """Load settings from defaults, then `config_files` (YAML, merged in order), then the
    environment."""
    files = (
        ()
        if config_files is None
        else (config_files,)
        if isinstance(config_files, Path)
        else tuple(config_files)
    )
    for config_file in files:
        if not config_file.is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")

    class _FromFile(Settings):
        yaml_files = files

    loaded = _FromFile(**overrides)
    return Settings.model_validate(loaded.model_dump())
