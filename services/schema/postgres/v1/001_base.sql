-- Tideflow PostgreSQL schema, version 1.

CREATE TABLE cluster_metadata (
  id                  INTEGER PRIMARY KEY CHECK (id = 1),
  cluster_name        TEXT    NOT NULL,
  history_shard_count INTEGER NOT NULL CHECK (history_shard_count > 0),
  data                BYTEA   NOT NULL
);

CREATE TABLE cluster_members (
  host_id           TEXT   PRIMARY KEY,
  role              TEXT   NOT NULL,
  rpc_address       TEXT   NOT NULL,
  session_start_ms  BIGINT NOT NULL,
  last_heartbeat_ms BIGINT NOT NULL,
  expires_ms        BIGINT NOT NULL
);
CREATE INDEX cluster_members_expiry ON cluster_members (expires_ms);

CREATE TABLE shards (
  shard_id INTEGER PRIMARY KEY,
  range_id BIGINT  NOT NULL,
  data     BYTEA   NOT NULL
);

CREATE TABLE executions (
  shard_id      INTEGER  NOT NULL,
  namespace_id  TEXT     NOT NULL,
  run_id        TEXT     NOT NULL,
  execution_id  TEXT     NOT NULL,
  next_event_id BIGINT   NOT NULL,
  db_version    BIGINT   NOT NULL,
  state         SMALLINT NOT NULL,
  data          BYTEA    NOT NULL,
  PRIMARY KEY (shard_id, namespace_id, run_id, execution_id)
);

CREATE TABLE current_runs (
  shard_id         INTEGER  NOT NULL,
  namespace_id     TEXT     NOT NULL,
  run_id           TEXT     NOT NULL,
  execution_id     TEXT     NOT NULL,
  state            SMALLINT NOT NULL,
  status           SMALLINT NOT NULL,
  start_request_id TEXT     NOT NULL,
  PRIMARY KEY (shard_id, namespace_id, run_id)
);

CREATE TABLE history_batches (
  shard_id       INTEGER NOT NULL,
  namespace_id   TEXT    NOT NULL,
  run_id         TEXT    NOT NULL,
  execution_id   TEXT    NOT NULL,
  first_event_id BIGINT  NOT NULL,
  txn_id         BIGINT  NOT NULL,
  event_count    INTEGER NOT NULL,
  data           BYTEA   NOT NULL,
  PRIMARY KEY (shard_id, namespace_id, run_id, execution_id, first_event_id, txn_id)
);

CREATE TABLE transfer_tasks (
  shard_id INTEGER NOT NULL,
  task_id  BIGINT  NOT NULL,
  data     BYTEA   NOT NULL,
  PRIMARY KEY (shard_id, task_id)
);

CREATE TABLE timer_tasks (
  shard_id     INTEGER NOT NULL,
  fire_time_ms BIGINT  NOT NULL,
  task_id      BIGINT  NOT NULL,
  data         BYTEA   NOT NULL,
  PRIMARY KEY (shard_id, fire_time_ms, task_id)
);

CREATE TABLE task_queues (
  namespace_id TEXT     NOT NULL,
  name         TEXT     NOT NULL,
  kind         SMALLINT NOT NULL,
  partition_id INTEGER  NOT NULL,
  range_id     BIGINT   NOT NULL,
  data         BYTEA    NOT NULL,
  PRIMARY KEY (namespace_id, name, kind, partition_id)
);

CREATE TABLE backlog_tasks (
  namespace_id TEXT     NOT NULL,
  task_queue   TEXT     NOT NULL,
  kind         SMALLINT NOT NULL,
  partition_id INTEGER  NOT NULL,
  task_id      BIGINT   NOT NULL,
  expiry_ms    BIGINT,
  data         BYTEA    NOT NULL,
  PRIMARY KEY (namespace_id, task_queue, kind, partition_id, task_id)
);

CREATE TABLE namespaces (
  id   TEXT  PRIMARY KEY,
  name TEXT  NOT NULL UNIQUE,
  data BYTEA NOT NULL
);

CREATE TABLE flows (
  namespace_id   TEXT    NOT NULL,
  name           TEXT    NOT NULL,
  version        INTEGER NOT NULL,
  create_time_ms BIGINT  NOT NULL,
  data           BYTEA   NOT NULL,
  PRIMARY KEY (namespace_id, name, version)
);

CREATE TABLE visibility (
  namespace_id   TEXT     NOT NULL,
  run_id         TEXT     NOT NULL,
  execution_id   TEXT     NOT NULL,
  flow_name      TEXT     NOT NULL,
  flow_version   INTEGER  NOT NULL,
  task_queue     TEXT     NOT NULL,
  status         SMALLINT NOT NULL,
  start_time_ms  BIGINT   NOT NULL,
  close_time_ms  BIGINT,
  history_length BIGINT   NOT NULL,
  memo           BYTEA    NOT NULL,
  PRIMARY KEY (namespace_id, execution_id)
);
CREATE INDEX visibility_by_start ON visibility (namespace_id, start_time_ms DESC, execution_id DESC);
CREATE INDEX visibility_by_status ON visibility (namespace_id, status, start_time_ms DESC, execution_id DESC);
CREATE INDEX visibility_by_flow ON visibility (namespace_id, flow_name, start_time_ms DESC, execution_id DESC);
CREATE INDEX visibility_by_run_id ON visibility (namespace_id, run_id, start_time_ms DESC);
