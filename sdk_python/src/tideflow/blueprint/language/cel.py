"""The one module that talks to the `cel` bindings (common-expression-language).

Everything else sees `CelProgram` and `Activation`, typed here, and two error types, so the
bindings can change (or be replaced) behind this boundary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import cel

# Names that read as identifiers in CEL but are types or namespaces, not variables.
BUILTIN_NAMES = frozenset(
    {"bool", "bytes", "double", "int", "list", "map", "null_type", "string", "type", "uint"}
    | {"dyn", "optional", "timestamp", "duration"}
)

_TIME_GETTERS = (
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
)
FUNCTIONS: Mapping[str, str | None] = {
    "size": "int",
    "contains": "bool",
    "startsWith": "bool",
    "endsWith": "bool",
    "matches": "bool",
    "int": "int",
    "uint": "uint",
    "double": "double",
    "string": "string",
    "bytes": "bytes",
    "timestamp": "timestamp",
    "duration": "duration",
    "type": "type",
    "dyn": None,
    **dict.fromkeys(_TIME_GETTERS, "int"),  # of a timestamp (and a duration's hours to millis)
    "optional.of": "optional",
    "optional.none": "optional",
    "optional.ofNonZeroValue": "optional",
    "or": "optional",  # the methods of an optional
    "hasValue": "bool",
    "value": None,
    "orValue": None,
}
"""Every function an expression may call, with the type it returns (None: it depends on the
values, known only at run time). These are the bindings' built-in functions: the engine
evaluates with no functions of its own (`Activation` passes variables only), and functions
the bindings leave out (`max`, `lowerAscii`, `cel.stdlib`'s extras) fail at run time, so
registration refuses them."""

CALLED: Mapping[str, str | None] = {
    name.rpartition(".")[2]: result for name, result in FUNCTIONS.items()
}
"""`FUNCTIONS` by the names `CelProgram.functions` gives them: `of` for `optional.of`."""

MACROS: Mapping[str, tuple[str, str]] = {
    "has": ("bool", "has(x.field)"),
    "all": ("bool", "list.all(x, <condition on x>)"),
    "exists": ("bool", "list.exists(x, <condition on x>)"),
    "exists_one": ("bool", "list.exists_one(x, <condition on x>)"),
    "existsOne": ("bool", "list.existsOne(x, <condition on x>)"),
    "map": ("list", "list.map(x, <value of x>)"),
    "filter": ("list", "list.filter(x, <condition on x>)"),
}
"""The parser's macros, with the type each gives and how it is written. The parser expands
them, so a program never reports them as calls unless written wrongly (`list.exists(x)`)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CelSyntaxError(ValueError):
    """The expression does not parse; the message is the parser's, positions included."""


class CelEvaluationError(Exception):
    """The expression failed at run time (missing key, type mismatch, overflow...)."""


class CelProgram:
    """A compiled expression. `variables` are the root identifiers it reads, comprehension
    variables included (CEL's parser cannot tell them apart); `functions` the functions it
    calls by name, methods included, operators not."""

    __slots__ = ("_program", "functions", "source", "variables")

    def __init__(self, source: str, program: cel.Program) -> None:
        self.source = source
        self._program = program
        self.variables = frozenset(
            name.lstrip(".") for name in program.variables() if name not in BUILTIN_NAMES
        )
        # Operators come as overload ids (`_+_`, `!_`, `@in`), never as identifiers.
        self.functions = frozenset(
            name for name in program.functions() if _IDENTIFIER.fullmatch(name)
        )

    def evaluate(self, activation: Activation) -> object:
        try:
            return self._program.execute(activation.context())
        except KeyError as e:
            raise CelEvaluationError(f"no such key: {_shown(e.args[0])}") from None
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


def _shown(key: object) -> str:
    """A map key as the expression would write it: a string in double quotes (as JSON
    writes it), anything else as itself."""
    return json.dumps(key, ensure_ascii=False) if isinstance(key, str) else str(key)
