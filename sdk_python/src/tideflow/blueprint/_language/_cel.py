"""The one module that talks to the `cel` bindings (common-expression-language).

Everything else sees `CelProgram` and `Activation`, typed here, and two error types, so the
bindings can change (or be replaced) behind this boundary.
"""

from __future__ import annotations

from collections.abc import Mapping

import cel

# Names that read as identifiers in CEL but are types or namespaces, not variables.
BUILTIN_NAMES = frozenset(
    {"bool", "bytes", "double", "int", "list", "map", "null_type", "string", "type", "uint"}
    | {"dyn", "optional", "timestamp", "duration"}
)


class CelSyntaxError(ValueError):
    """The expression does not parse; the message is the parser's, positions included."""


class CelEvaluationError(Exception):
    """The expression failed at run time (missing key, type mismatch, overflow...)."""


class CelProgram:
    """A compiled expression. `variables` are the root identifiers it reads, comprehension
    variables included (CEL's parser cannot tell them apart)."""

    __slots__ = ("_program", "source", "variables")

    def __init__(self, source: str, program: cel.Program) -> None:
        self.source = source
        self._program = program
        self.variables = frozenset(
            name.lstrip(".") for name in program.variables() if name not in BUILTIN_NAMES
        )

    def evaluate(self, activation: Activation) -> object:
        try:
            return self._program.execute(activation.context())
        except KeyError as e:
            raise CelEvaluationError(f"no such key: {e.args[0]!r}") from None
        except Exception as e:
            raise CelEvaluationError(str(e) or type(e).__name__) from None

    def __repr__(self) -> str:
        return f"CelProgram({self.source!r})"


def compile_cel(source: str) -> CelProgram:
    try:
        program = cel.compile(source)
    except Exception as e:
        raise CelSyntaxError(_parse_errors(str(e))) from None
    return CelProgram(source, program)


def _parse_errors(text: str) -> str:
    """The parser's `ERROR: <input>:line:col: ...` lines without the echo of the source."""
    errors = [
        line.partition("ERROR: ")[2].removeprefix("<input>:")
        for line in text.splitlines()
        if "ERROR: " in line
    ]
    return "; ".join(errors) if errors else text


class Activation:
    """The variables one decision evaluates its expressions against. They are converted into
    CEL values once, on first use, however many expressions read them."""

    __slots__ = ("_context", "_variables")

    def __init__(self, variables: Mapping[str, object]) -> None:
        self._variables = dict(variables)
        self._context: cel.Context | None = None

    def context(self) -> cel.Context:
        if self._context is None:
            self._context = cel.Context(variables=self._variables)
        return self._context
