"""Tideflow's load harness: `python -m bench --help`."""
