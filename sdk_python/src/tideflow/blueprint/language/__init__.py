"""The blueprint language: the rules a blueprint must follow and what they compile to.

Public and owned once. The SDK's builder checks blueprints with it before they are sent, and
the server registers and runs them with it: what a run does is decided here, so the server
pins this distribution's version exactly (services/pyproject.toml). docs/blueprints.md is the
reference of the language; this package is its implementation:

- `validate`: registration checks (every error with its path) and the checked blueprint;
- `kinds`: each block kind's check and compiled plan;
- `templates`, `cel`, `refs`, `inference`: `${...}` templates and CEL expressions;
- `values`: JSON values and their protobuf forms; `model`: what expressions read of a run;
- `policy`: retry and timeout defaults and bounds.
"""
