"""Tideflow Python SDK."""
