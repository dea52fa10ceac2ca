"""One module per history RPC: `invoke(shard, request)` does the use case; the handler only
routes and maps errors."""
