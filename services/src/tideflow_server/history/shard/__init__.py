"""Shards: ownership, the per-shard execution cache, and the outbox queues."""
