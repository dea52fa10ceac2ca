"""Document-processing blocks and their worker process: `python -m workers.documents`."""
