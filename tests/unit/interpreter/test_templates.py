"""Data wiring: `${expr}` in JSON values, and JSON conversions."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from tests.unit.interpreter.support import done, failed, view
from tideflow.blueprint.language.errors import LanguageError
from tideflow.blueprint.language.refs import references
from tideflow.blueprint.language.templates import Expression, Placeholder, split_template
from tideflow_server.history.interpreter import (
    JSON,
    Env,
    ExpressionError,
    Template,
    json_to_struct,
    json_to_value,
    run_variables,
    struct_to_json,
    value_to_json,
)

RUN = view(
    {"ocr": done({"text": "hello", "pages": 3}), "lint": failed()},
    input={"doc": {"name": "a.pdf", "size": 2.0}, "tags": ["x", "y"], "flag": True},
    vars={"limit": 10},
)


def render(value: JSON) -> JSON:
    return Template.compile(value).render(Env.for_run(RUN))


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${input.doc}", {"name": "a.pdf", "size": 2}),
        ("${input.tags}", ["x", "y"]),
        ("${input.flag}", True),
        ("${input.doc.size + 1}", 3),  # whole doubles read as ints
        ("${double(input.doc.size) / 4.0}", 0.5),  # CEL does not mix int and double
        ("${null}", None),
        ("${'text'}", "text"),
        ("${blocks.ocr.output.pages * vars.limit}", 30),
        ("${blocks.ocr.status}", "SUCCEEDED"),
        ("${blocks.lint.error}", {"type": "Boom", "message": "it broke"}),
        ("${blocks.lint.failed && !blocks.ocr.failed}", True),
        ("${blocks.lint.attempt}", 3),
        (
            "${run}",
            {
                "id": "order-7",
                "execution_id": "e-1",
                "namespace": "default",
                "flow": "docs",
                "version": 1,
            },
        ),
        ("${b'ab'}", "YWI="),
        ("${timestamp('2024-05-01T10:00:00.250Z')}", "2024-05-01T10:00:00.25Z"),
        ("${duration('90s')}", "90s"),
        ("${duration('1.5s')}", "1.5s"),
        ("${ {'b': 1, 'a': {'z': 2, 'y': 3}} }", {"a": {"y": 3, "z": 2}, "b": 1}),
        ("${ {1: 'one'} }", {"1": "one"}),
        ("${ {'a': '}'}.a }", "}"),
        ("${ \"{\" + '}' }", "{}"),
    ],
)
def test_a_whole_placeholder_keeps_the_type(template: str, expected: JSON) -> None:
    assert render(template) == expected


def test_object_keys_come_out_sorted() -> None:
    result = render("${ {'b': 1, 'a': 2, 'c': 3} }")
    assert isinstance(result, dict)
    assert list(result) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("file ${input.doc.name}", "file a.pdf"),
        ("${input.doc.size}-${input.flag}-${null}", "2-true-null"),
        ("tags=${input.tags} doc=${input.doc}", 'tags=["x","y"] doc={"name":"a.pdf","size":2}'),
        ("pi≈${3.25}", "pi≈3.25"),
        ("$${input.doc.name} is ${input.doc.name}", "${input.doc.name} is a.pdf"),
        ("$${not an expression", "${not an expression"),
        ("costs $5 or $$ or ${1 + 1}$", "costs $5 or $$ or 2$"),
        ("no placeholders {here}", "no placeholders {here}"),
    ],
)
def test_placeholders_in_text_interpolate(template: str, expected: str) -> None:
    assert render(template) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # Spaces inside the braces: still the whole string, so still typed.
        ("${ input.doc.size }", 2),
        ("${\tinput.flag\n}", True),
        # Any text around it, even one space, makes a string.
        (" ${input.flag}", " true"),
        ("${input.doc.size} ", "2 "),
        # Several placeholders and nothing else: a string too.
        ("${input.doc.size}${input.flag}", "2true"),
        # Text forms: whole doubles as integers, objects with sorted keys, non-ASCII kept.
        ("n=${2.0}", "n=2"),
        ("o=${ {'z': 1, 'a': 'é'} }", 'o={"a":"é","z":1}'),
        ("at ${timestamp('2024-05-01T10:00:00Z')}", "at 2024-05-01T10:00:00Z"),
        ("${b'ab'}!", "YWI=!"),
        # Braces and dollars outside placeholders are ordinary characters.
        ("{${input.doc.size}}", "{2}"),
        ("$${}", "${}"),
        ("$$${input.flag}", "$${input.flag}"),
    ],
)
def test_documented_text_and_whole_rules(template: str, expected: JSON) -> None:
    """The rules docs/blueprints.md and blueprint.proto state, one case each."""
    assert render(template) == expected


def test_only_strings_are_templates() -> None:
    """Object keys are taken as they are; so are numbers, booleans and null."""
    template = Template.compile({"${input.flag}": "${input.flag}", "n": 1, "b": False, "z": None})
    assert template.render(Env.for_run(RUN)) == {
        "${input.flag}": True,
        "n": 1,
        "b": False,
        "z": None,
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("${}", "empty placeholder at offset 0"),
        ("a ${  }", "empty placeholder at offset 2"),
        ("x ${input", "`${` at offset 2 has no closing `}`"),
        ("${ {'a': 1 }", "`${` at offset 0 has no closing `}`"),
    ],
)
def test_unclosed_and_empty_placeholders_are_refused(text: str, problem: str) -> None:
    with pytest.raises(LanguageError) as raised:
        Template.compile({"v": text}, path="output")
    assert [(v.field, v.description) for v in raised.value.violations] == [("output.v", problem)]


def test_containers_render_recursively_and_constants_are_copies() -> None:
    template = Template.compile(
        {"a": ["${input.tags[0]}", 1, {"b": "${vars.limit}"}], "c": {"d": [1, 2]}}
    )
    env = Env.for_run(RUN)
    first = template.render(env)
    assert first == {"a": ["x", 1, {"b": 10}], "c": {"d": [1, 2]}}
    assert isinstance(first, dict) and isinstance(first["c"], dict)
    first["c"]["d"] = "changed"
    assert template.render(env) == {"a": ["x", 1, {"b": 10}], "c": {"d": [1, 2]}}
    assert len(template.expressions) == 2
    assert Template.compile({"x": [1, "plain"]}).constant


def test_runtime_errors_are_typed_with_expression_and_path() -> None:
    template = Template.compile({"doc": ["${input.doc.missing}"]}, path="blocks[3].input")
    with pytest.raises(ExpressionError) as raised:
        template.render(Env.for_run(RUN))
    error = raised.value
    assert error.path == "blocks[3].input.doc[0]"
    assert error.expression == "input.doc.missing"
    assert error.message == 'no such key: "missing"'
    assert str(error) == 'blocks[3].input.doc[0]: `input.doc.missing`: no such key: "missing"'

    for bad in ("${1 / 0}", "${input.doc.name + 1}", "${blocks.absent.output}", "${1.0 / 0.0}"):
        with pytest.raises(ExpressionError):
            render(bad)


def test_syntax_errors_raise_language_error_with_paths() -> None:
    with pytest.raises(LanguageError) as raised:
        Template.compile({"a": "${1 +}", "b": ["${unclosed"]}, path="output")
    fields = [v.field for v in raised.value.violations]
    assert fields == ["output.a", "output.b[0]"]


def test_split_template() -> None:
    assert split_template("a ${x} b ${ y } $${z}") == [
        "a ",
        Placeholder("x"),
        " b ",
        Placeholder("y"),
        " ${z}",
    ]
    assert split_template('${ r\'}\' + "\\"}" }') == [Placeholder('r\'}\' + "\\"}"')]


def test_run_variables_bind_block_states_for_depends() -> None:
    variables = run_variables(RUN)
    assert variables["ocr"] == {
        "status": "SUCCEEDED",
        "succeeded": True,
        "failed": False,
        "skipped": False,
        "canceled": False,
    }
    assert set(variables) == {"ocr", "lint", "input", "vars", "run", "blocks"}


def test_value_conversions() -> None:
    data: JSON = {"b": [1, 2.5, "s", None, True, {"x": []}], "a": {}}
    value = json_to_value(data)
    assert value.struct_value.fields["b"].list_value.values[0].number_value == 1.0
    assert value_to_json(value) == data
    back = value_to_json(value)
    assert isinstance(back, dict) and list(back) == ["a", "b"]
    assert struct_to_json(json_to_struct({"k": 3})) == {"k": 3}
    assert value_to_json(struct_pb2.Value()) is None
    assert value_to_json(json_to_value(2.0**60)) == 2.0**60  # beyond 2**53 stays a double


def test_reference_scanner() -> None:
    refs = references(
        "blocks.a.output + blocks['b'] + input.blocks.c + has(blocks.d) + blocks[x] "
        '+ "blocks.e" + [1].map(v, v) // blocks.f',
        frozenset({"blocks"}),
    )
    assert [(r.name, r.guarded) for r in refs.members] == [
        ("a", False),
        ("b", False),
        ("d", True),
        (None, False),
    ]
    assert refs.bound == {"v"}


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("input.doc.name", "a string"),
        ("1.5", "a double"),
        ("vars.limit", "an int"),
        ("input.tags", "a list"),
        ("input.doc", "a map"),
        ("null", "null"),
    ],
)
def test_a_condition_that_is_not_a_bool_names_the_type_as_cel_does(source: str, named: str) -> None:
    """Messages name CEL's types (`string`, `null`), not Python's (`str`, `None`)."""
    with pytest.raises(ExpressionError) as raised:
        Expression.compile(source).evaluate_bool(Env.for_run(RUN))
    assert raised.value.message == f"wants a bool, got {named}"
