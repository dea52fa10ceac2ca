"""The history role: shards, mutable state, the outbox queues and the blueprint interpreter."""
