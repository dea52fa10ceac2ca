"""The Python SDK's example worker: demo blocks or the worker conformance blocks."""
