"""Shards: ownership, the per-shard execution cache, the outbox queues, and the port through
which use cases and task executors see a shard (port.py)."""
