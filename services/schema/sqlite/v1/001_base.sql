-- Tideflow SQLite schema, version 1.

CREATE TABLE cluster_metadata (
  id                  INTEGER PRIMARY KEY CHECK (id = 1),
  cluster_name        TEXT    NOT NULL,
  history_shard_count INTEGER NOT NULL CHECK (history_shard_count > 0),
  data                BLOB   NOT NULL
);

CREATE TABLE cluster_members (
  host_id           TEXT   PRIMARY KEY,
  role              TEXT   NOT NULL,
  rpc_address       TEXT   NOT NULL,
  session_start_ms  INTEGER NOT NULL,
  last_heartbeat_ms INTEGER NOT NULL,
  expires_ms        INTEGER NOT NULL
);
CREATE INDEX cluster_members_expiry ON cluster_members (expires_ms);

CREATE TABLE shards (
  shard_id INTEGER PRIMARY KEY,
  range_id INTEGER  NOT NULL,
  data     BLOB   NOT NULL
);

CREATE TABLE executions (
  shard_id      INTEGER  NOT NULL,
  namespace_id  TEXT     NOT NULL,
  run_id        TEXT     NOT NULL,
  execution_id  TEXT     NOT NULL,
  next_event_id INTEGER   NOT NULL,
  db_version    INTEGER   NOT NULL,
  state         INTEGER NOT NULL,
  data          BLOB    NOT NULL,
  PRIMARY KEY (shard_id, namespace_id, run_id, execution_id)
) WITHOUT ROWID;

CREATE TABLE current_runs (
  shard_id         INTEGER  NOT NULL,
  namespace_id     TEXT     NOT NULL,
  run_id           TEXT     NOT NULL,
  execution_id     TEXT     NOT NULL,
  state            INTEGER NOT NULL,
  status           INTEGER NOT NULL,
  start_request_id TEXT     NOT NULL,
  PRIMARY KEY (shard_id, namespace_id, run_id)
) WITHOUT ROWID;

CREATE TABLE history_batches (
  shard_id       INTEGER NOT NULL,
  namespace_id   TEXT    NOT NULL,
  run_id         TEXT    NOT NULL,
  execution_id   TEXT    NOT NULL,
  first_event_id INTEGER  NOT NULL,
  txn_id         INTEGER  NOT NULL,
  event_count    INTEGER NOT NULL,
  data           BLOB   NOT NULL,
  PRIMARY KEY (shard_id, namespace_id, run_id, execution_id, first_event_id, txn_id)
) WITHOUT ROWID;

CREATE TABLE transfer_tasks (
  shard_id INTEGER NOT NULL,
  task_id  INTEGER  NOT NULL,
  data     BLOB   NOT NULL,
  PRIMARY KEY (shard_id, task_id)
) WITHOUT ROWID;

CREATE TABLE timer_tasks (
  shard_id     INTEGER NOT NULL,
  fire_time_ms INTEGER  NOT NULL,
  task_id      INTEGER  NOT NULL,
  data         BLOB   NOT NULL,
  PRIMARY KEY (shard_id, fire_time_ms, task_id)
) WITHOUT ROWID;

CREATE TABLE task_queues (
  namespace_id TEXT     NOT NULL,
  name         TEXT     NOT NULL,
  kind         INTEGER NOT NULL,
  partition_id INTEGER  NOT NULL,
  range_id     INTEGER   NOT NULL,
  data         BLOB    NOT NULL,
  PRIMARY KEY (namespace_id, name, kind, partition_id)
) WITHOUT ROWID;

CREATE TABLE backlog_tasks (
  namespace_id TEXT     NOT NULL,
  task_queue   TEXT     NOT NULL,
  kind         INTEGER NOT NULL,
  partition_id INTEGER  NOT NULL,
  task_id      INTEGER   NOT NULL,
  expiry_ms    INTEGER,
  data         BLOB    NOT NULL,
  PRIMARY KEY (namespace_id, task_queue, kind, partition_id, task_id)
) WITHOUT ROWID;

CREATE TABLE namespaces (
  id   TEXT  PRIMARY KEY,
  name TEXT  NOT NULL UNIQUE,
  data BLOB NOT NULL
);

CREATE TABLE flows (
  namespace_id   TEXT    NOT NULL,
  name           TEXT    NOT NULL,
  version        INTEGER NOT NULL,
  create_time_ms INTEGER  NOT NULL,
  data           BLOB   NOT NULL,
  PRIMARY KEY (namespace_id, name, version)
) WITHOUT ROWID;

CREATE TABLE visibility (
  namespace_id   TEXT     NOT NULL,
  run_id         TEXT     NOT NULL,
  execution_id   TEXT     NOT NULL,
  flow_name      TEXT     NOT NULL,
  flow_version   INTEGER  NOT NULL,
  task_queue     TEXT     NOT NULL,
  status         INTEGER NOT NULL,
  start_time_ms  INTEGER   NOT NULL,
  close_time_ms  INTEGER,
  history_length INTEGER   NOT NULL,
  memo           BLOB    NOT NULL,
  PRIMARY KEY (namespace_id, execution_id)
);
CREATE INDEX visibility_by_start ON visibility (namespace_id, start_time_ms DESC, execution_id DESC);
CREATE INDEX visibility_by_status ON visibility (namespace_id, status, start_time_ms DESC, execution_id DESC);
CREATE INDEX visibility_by_flow ON visibility (namespace_id, flow_name, start_time_ms DESC, execution_id DESC);
CREATE INDEX visibility_by_run_id ON visibility (namespace_id, run_id, start_time_ms DESC);
