"""The frontend role: the public API, validated, authenticated, rate limited, then routed to
history and matching."""
