"""The persistence conformance suite: one set of cases, run against every backend.

What these cases require is the definition of a correct backend.
"""
