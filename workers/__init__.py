"""Reference block workers (see workers/README.md)."""
