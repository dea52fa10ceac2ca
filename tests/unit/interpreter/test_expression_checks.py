"""Registration checks what expressions call and that a condition can be a bool (issue 16,
bug 3), without refusing anything the engine can run."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.interpreter.support import blueprint, external, view
from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint import Blueprint, BlueprintError
from tideflow.blueprint.language.cel import (
    FUNCTIONS,
    MACROS,
    Activation,
    CelEvaluationError,
    CelSyntaxError,
    compile_cel,
)
from tideflow.blueprint.language.inference import result_types
from tideflow_server.history.interpreter import (
    FailBlock,
    compile_blueprint,
    decide,
    validate_blueprint,
)
from tideflow_server.rpc.errors import InvalidArgument


def problems(bp: blueprint_pb2.Blueprint) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in validate_blueprint(bp):
        found.setdefault(v.field, []).append(v.description)
    return found


def test_the_issue_examples_are_refused_at_their_paths() -> None:
    found = problems(
        blueprint(
            external("a"),
            external("b", "a", when="nosuchfn(blocks.a.output)"),
            external("c", "a", when='"yes"'),
        )
    )
    assert list(found) == ["blocks[1].when", "blocks[2].when"]
    [unknown] = found["blocks[1].when"]
    assert unknown.startswith("`nosuchfn(blocks.a.output)`: unknown function nosuchfn(); ")
    assert "startsWith, string, timestamp" in unknown  # the functions there are
    assert found["blocks[2].when"] == ['`"yes"`: must be a bool, but is a string']


def test_the_builder_refuses_them_as_the_server_does() -> None:
    bp = Blueprint("issue", version=1, task_queue="q")
    bp.transform("a", output=1)
    bp.transform("b", output=2, needs=["a"], when="nosuchfn(blocks.a.output)")
    bp.transform("c", output=3, needs=["a"], when='"yes"')
    with pytest.raises(BlueprintError) as raised:
        bp.build()
    assert [v.field for v in raised.value.violations] == ["blocks[1].when", "blocks[2].when"]
    with pytest.raises(InvalidArgument) as compiled:
        compile_blueprint(bp.message)
    assert compiled.value.violations == raised.value.violations


# Each `when` with the problem registration reports, or None where it must register.
CONDITIONS: list[tuple[str, str | None]] = [
    ("blocks.a.output.pages > 2", None),
    ("blocks.a.output.ok", None),  # a field: a bool or not, only the run can tell
    ("blocks.a.output['ok'] == true || blocks.a.failed", None),
    ("!blocks.a.output.skip", None),
    ("blocks.a.output.label in ['invoice', 'receipt']", None),
    ("blocks.a.output.items.exists(i, i.total > 100)", None),
    ("blocks.a.output.items.all(i, has(i.total))", None),
    ("blocks.a.output.items.exists_one(i, i.first)", None),
    ("blocks.a.output.items.map(i, i.total).filter(t, t > 1).size() > 0", None),
    ("has(blocks.a.output.total)", None),
    ("size(input.name) > 3 && input.name.startsWith('a') && input.name.endsWith('z')", None),
    ("input.name.matches('^a+$') || input.name.contains('b')", None),
    ("int(input.n) == 3 || string(input.n) == '3' || double(input.n) > 2.5", None),
    ("timestamp(input.at) < timestamp('2030-01-01T00:00:00Z') - duration('1h')", None),
    ("timestamp(input.at).getDayOfWeek() == 1", None),
    ("dyn(input.flag)", None),
    ("input.flag ? true : blocks.a.output.ok", None),
    ("(input.n + 1) % 2 == 0", None),
    ('"yes"', "must be a bool, but is a string"),
    ("1", "must be a bool, but is an int"),
    ("null", "must be a bool, but is null"),
    ("size(input.items)", "must be a bool, but is an int"),
    ("input.n * 2", "must be a bool, but is a number"),
    ("input.flag ? 1 : 'one'", "must be a bool, but is an int or a string"),
    ("blocks.a.output.items.map(i, i.ok)", "must be a bool, but is a list"),
    ("{'ok': true}", "must be a bool, but is a map"),
    ("(input.name)", None),
    ("nosuchfn(blocks.a.output)", "unknown function nosuchfn(); the functions are"),
    ("max(input.a, input.b) > 1", "unknown function max(); the functions are"),
    ("input.name.startswith('a')", "unknown function startswith(); did you mean startsWith()?"),
    ("input.items.exists(i)", "exists() is a macro, written list.exists(x, <condition on x>)"),
]


def test_only_conditions_that_cannot_be_bools_or_cannot_run_are_refused() -> None:
    blocks = [external("a")] + [
        external(f"b{i}", "a", when=w) for i, (w, _) in enumerate(CONDITIONS)
    ]
    found = problems(blueprint(*blocks))
    expected = {
        f"blocks[{i + 1}].when": problem for i, (_, problem) in enumerate(CONDITIONS) if problem
    }
    assert found.keys() == expected.keys()
    for field, problem in expected.items():
        assert any(problem in description for description in found[field]), found[field]


def test_depends_must_be_a_bool_too() -> None:
    found = problems(blueprint(external("a"), external("b", depends="blocks.a.succeeded ? 1 : 0")))
    assert found == {
        "blocks[1].depends": ["`blocks.a.succeeded ? 1 : 0`: must be a bool, but is an int"]
    }


def test_every_expression_site_checks_its_calls() -> None:
    found = problems(
        blueprint(
            external("a", input={"doc": "${input.doc}", "name": "n-${lowerAscii(input.name)}"}),
            {"id": "s", "needs": ["a"], "set": {"vars": {"n": "${bool(input.n)}"}}},
            {"id": "t", "needs": ["s"], "transform": {"output": ["${now()}"]}},
            vars={"tag": "${input.tag.trim()}", "n": 0},
            output="${Summary{pages: 1}}",
        )
    )
    assert {field: [d.split(";")[0] for d in ds] for field, ds in found.items()} == {
        "blocks[0].input.name": ["`lowerAscii(input.name)`: unknown function lowerAscii()"],
        "blocks[1].set.vars.n": ["`bool(input.n)`: unknown function bool()"],
        "blocks[2].transform.output[0]": ["`now()`: unknown function now()"],
        "vars.tag": ["`input.tag.trim()`: unknown function trim()"],
        "output": [
            "`Summary{pages: 1}`: Summary{...} builds a message, and expressions have no message "
            "types"
        ],
    }


def test_a_stored_version_still_loads_and_fails_at_run_time_as_before() -> None:
    """Versions registered before these checks existed must keep running."""
    bp = blueprint(external("a", when='"yes"'), external("b", input="${max(1, 2)}"))
    with pytest.raises(InvalidArgument):
        compile_blueprint(bp)
    compiled = compile_blueprint(bp, stored=True)
    commands = decide(compiled, view())
    assert [c.block_id for c in commands if isinstance(c, FailBlock)] == ["a", "b"]
    a, b = commands
    assert isinstance(a, FailBlock) and isinstance(b, FailBlock)
    assert a.error.message == 'blocks[0].when: `"yes"`: wants a bool, got a string'
    assert "max" in b.error.message


# -- the tables agree with the bindings ----------------------------------------------------

_CEL_TYPES = {
    "google.protobuf.Timestamp": "timestamp",
    "google.protobuf.Duration": "duration",
    "optional_type": "optional",
    "null_type": "null",
}
_T = "timestamp('2024-02-03T04:05:06Z')"
SAMPLES: dict[str, str] = {
    "size": "size('abc')",
    "contains": "'abc'.contains('b')",
    "startsWith": "'abc'.startsWith('a')",
    "endsWith": "'abc'.endsWith('c')",
    "matches": "'abc'.matches('^a')",
    "int": "int('3')",
    "uint": "uint(3)",
    "double": "double(3)",
    "string": "string(3)",
    "bytes": "bytes('a')",
    "timestamp": _T,
    "duration": "duration('90s')",
    "type": "type(1)",
    "dyn": "dyn(1)",
    **{name: f"{_T}.{name}()" for name in FUNCTIONS if name.startswith("get")},
    "optional.of": "optional.of(1)",
    "optional.none": "optional.none()",
    "optional.ofNonZeroValue": "optional.ofNonZeroValue(1)",
    "or": "optional.none().or(optional.of(1))",
    "hasValue": "optional.of(1).hasValue()",
    "value": "optional.of(1).value()",
    "orValue": "optional.none().orValue(2)",
}
MACRO_SAMPLES = {
    "has": "has({'a': 1}.a)",
    "all": "[1, 2].all(x, x > 0)",
    "exists": "[1, 2].exists(x, x > 1)",
    "exists_one": "[1, 2].exists_one(x, x > 1)",
    "existsOne": "[1, 2].existsOne(x, x > 1)",
    "map": "[1, 2].map(x, x * 2)",
    "filter": "[1, 2].filter(x, x > 1)",
}


def cel_type(source: str, variables: dict[str, Any] | None = None) -> str:
    name = compile_cel(f"type({source})").evaluate(Activation(variables or {}))
    assert isinstance(name, str)
    return _CEL_TYPES.get(name, name)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_function_registration_allows_runs_and_returns_what_it_says(name: str) -> None:
    sample = SAMPLES[name]
    program = compile_cel(sample)
    assert name.rpartition(".")[2] in program.functions
    program.evaluate(Activation({}))  # the bindings have it
    if FUNCTIONS[name] is not None:
        assert cel_type(sample) == FUNCTIONS[name]
    assert problems(blueprint(external("a", input=f"${{{sample}}}"))) == {}


def test_samples_cover_the_tables() -> None:
    assert SAMPLES.keys() == FUNCTIONS.keys()
    assert MACRO_SAMPLES.keys() == MACROS.keys()


@pytest.mark.parametrize("name", MACROS)
def test_every_macro_runs_and_gives_what_it_says(name: str) -> None:
    sample = MACRO_SAMPLES[name]
    assert cel_type(sample) == MACROS[name][0]
    assert result_types(sample) == frozenset({MACROS[name][0]})


@pytest.mark.parametrize(
    "source", ["max(1, 2)", "'A'.lowerAscii()", "bool('true')", "'a,b'.split(',')", "now()"]
)
def test_functions_registration_refuses_fail_at_run_time(source: str) -> None:
    with pytest.raises(CelEvaluationError, match="Undefined variable or function"):
        compile_cel(source).evaluate(Activation({}))
    [(field, [problem])] = problems(blueprint(external("a", input=f"${{{source}}}"))).items()
    assert field == "blocks[0].input"
    assert f"`{source}`: unknown function " in problem


# -- the type inference never rules out what an expression gives -------------------------

VARIABLES = {"flag": True, "n": 3, "s": "abc", "items": [1, 2], "m": {"k": True, "n": 1}}
ATOMS = [
    "1",
    "2u",
    "1.5",
    "-1",
    "'s'",
    "b'b'",
    "true",
    "false",
    "null",
    "[1, 2]",
    "{'k': true}",
    "flag",
    "n",
    "s",
    "items",
    "m.k",
    "m['n']",
    "items[0]",
    "duration('1s')",
    _T,
    "optional.of(1)",
]
BINARY = ["||", "&&", "==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%"]


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def call(template: str) -> st.SearchStrategy[str]:
        return inner.map(template.format)

    return st.one_of(
        st.tuples(inner, st.sampled_from(BINARY), inner).map(" ".join),
        st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        st.tuples(st.sampled_from(["!", "-"]), inner).map("".join),
        *(
            call(t)
            for t in [
                "({})",
                "size({})",
                "{}.size()",
                "string({})",
                "int({})",
                "double({})",
                "dyn({})",
                "type({})",
                "{}.startsWith('a')",
                "{}.contains('a')",
                "[{}].exists(v, v == 1)",
                "[{}].map(v, v)",
                "[{}].filter(v, v)",
                "[{}][0]",
                "{{'k': {}}}.k",
                "optional.of({}).value()",
                "optional.none().orValue({})",
                "has(m.k) == {}",
            ]
        ),
    )


expressions = st.recursive(st.sampled_from(ATOMS), _grow, max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_inferred_types_include_what_the_expression_gives(source: str) -> None:
    inferred = result_types(source)
    try:
        actual = cel_type(source, VARIABLES)
    except (CelSyntaxError, CelEvaluationError):
        return  # no value to compare with
    assert inferred is None or actual in inferred, (source, actual, inferred)
