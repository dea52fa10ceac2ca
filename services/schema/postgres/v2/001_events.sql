-- Tideflow PostgreSQL schema, version 2: published events and the event blocks waiting for them.

CREATE TABLE events (
  namespace_id    TEXT    NOT NULL,
  event_id        TEXT    NOT NULL,
  event_type      TEXT    NOT NULL,
  correlation_key TEXT    NOT NULL,
  publish_time_ms BIGINT  NOT NULL,
  expire_ms       BIGINT  NOT NULL,
  data            BYTEA   NOT NULL,
  PRIMARY KEY (namespace_id, event_id)
);
CREATE INDEX events_by_key ON events (namespace_id, event_type, correlation_key, publish_time_ms);
CREATE INDEX events_expiry ON events (expire_ms);

CREATE TABLE event_waits (
  namespace_id    TEXT NOT NULL,
  event_type      TEXT NOT NULL,
  correlation_key TEXT NOT NULL,
  run_id          TEXT NOT NULL,
  execution_id    TEXT NOT NULL,
  block_id        TEXT NOT NULL,
  PRIMARY KEY (namespace_id, event_type, correlation_key, run_id, execution_id, block_id)
);
