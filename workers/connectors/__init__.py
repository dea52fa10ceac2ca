"""Connector blocks: `http@1`, `sql@1` and `publish@1`, served by `python -m workers.connectors`."""
