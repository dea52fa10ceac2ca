"""The throwaway PostgreSQL server lives in deploy/local/; re-exported for the tests."""

from deploy.local.postgres import PostgresServer, PostgresUnavailable
from deploy.ports import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "free_port"]
