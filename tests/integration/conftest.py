"""Integration suites use the cluster fixtures of tests/conftest.py; `make_cluster` stays
importable from here for the chaos suite."""

from tests.conftest import make_cluster

__all__ = ["make_cluster"]
