-- Tideflow PostgreSQL schema, version 3: API keys (a hash of each key's secret, never the key).

CREATE TABLE api_keys (
  key_id    TEXT  PRIMARY KEY,
  namespace TEXT  NOT NULL,
  data      BYTEA NOT NULL
);
CREATE INDEX api_keys_by_namespace ON api_keys (namespace, key_id);
