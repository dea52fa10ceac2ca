"""The language's own error: what a blueprint, template or expression got wrong."""

from __future__ import annotations

from collections.abc import Sequence

from tideflow.errors import FieldViolation, TideflowError


class LanguageError(TideflowError, ValueError):
    """Every problem found, each with the path of its field (`blocks[2].needs[0]`)."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = list(violations)
        super().__init__(
            "; ".join(
                f"{v.field}: {v.description}" if v.field else v.description for v in self.violations
            )
        )
