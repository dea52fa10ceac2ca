"""Placeholder entry point, replaced by the tidectl application."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("tidectl is being built")
