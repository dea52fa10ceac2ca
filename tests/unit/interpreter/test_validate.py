"""Registration: every problem at once, each at the path of its field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from tests.unit.interpreter.support import blueprint, compile_, external
from tideflow.api.v1 import blueprint_pb2
from tideflow_server.history.interpreter import (
    compile_blueprint,
    validate_blueprint,
)
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument


def problems(bp: blueprint_pb2.Blueprint, **options: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in validate_blueprint(bp, **options):
        found.setdefault(v.field, []).append(v.description)
    return found


def test_a_sound_blueprint_has_no_problems() -> None:
    bp = blueprint(
        external("fetch", input={"url": "${input.url}"}),
        external("ocr", "fetch", input={"file": "${blocks.fetch.output.path}"}),
        {"id": "label", "needs": ["ocr"], "transform": {"output": "${blocks.ocr.output.text}"}},
        {"id": "audit", "depends": "ocr.succeeded || ocr.failed", "set": {"vars": {"n": 1}}},
        vars={"n": 0, "tag": "run-${run.id}-${input.url}"},
        inputSchema={"type": "object", "required": ["url"]},
        output={"label": "${blocks.label.output}", "n": "${vars.n}"},
    )
    assert validate_blueprint(bp) == []


def test_reports_every_problem_with_its_path() -> None:
    bp = blueprint(
        external("a", "b", input={"text": "${blocks.c.output.text}"}),  # c: not an ancestor
        external("b", "a", "ghost", "a"),  # cycle a -> b -> a, unknown need, duplicate need
        {"id": "c", "when": "blocks.a.output.ok &&", "transform": {}},  # bad CEL
        {"id": "input", "set": {"vars": {"x": 1}}},  # reserved id
        {"id": "s", "switchBlock": {"cases": [{"when": "true", "goto": "c"}]}},
        {"id": "m", "mapBlock": {"items": "${input.list}"}},
        {"id": "w", "wait": {}},
        inputSchema={"type": "objekt"},
        output="${blocks.nobody.output}",
    )
    found = problems(bp)
    assert found["blocks[1].needs[0]"] == ["dependency cycle: a -> b -> a"]
    assert found["blocks[1].needs[1]"] == ["no block 'ghost'"]
    assert found["blocks[1].needs[2]"] == ["'a' is already needed"]
    assert "blocks.c is not an ancestor" in found["blocks[0].input.text"][0]
    assert found["blocks[2].when"][0].startswith("invalid CEL `blocks.a.output.ok &&`: 1:")
    assert "Syntax error" in found["blocks[2].when"][0]
    assert found["blocks[3].id"] == ["'input' is reserved"]
    assert found["blocks[4].switch_block.cases[0].goto"] == [
        "'c' must need 's': a route goes to a direct dependent"
    ]
    assert found["blocks[5].map_block.blocks"] == ["a container needs at least one block"]
    assert found["blocks[6].wait"] == ["set duration, until or until_expr"]
    assert "not a valid JSON Schema" in found["input_schema.type"][0]
    assert found["output"] == ["`blocks.nobody.output`: blocks.nobody names no block"]
    assert len(found) == 11


def test_identity_and_block_count() -> None:
    bp = blueprint(name="9lives", version=0)
    assert problems(bp) == {
        "name": [
            "'9lives' is not a flow name (a letter, then up to 127 letters, digits, '_', '.' "
            "or '-')"
        ],
        "version": ["the version must be >= 1"],
        "blocks": ["a blueprint needs at least one block"],
    }
    many = blueprint(*(external(f"b{i}") for i in range(4)))
    assert problems(many, max_blocks=3) == {"blocks": ["at most 3 blocks, got 4"]}


@pytest.mark.parametrize(
    ("block_id", "description"),
    [
        ("", "a block id is required"),
        ("has-dash", "'has-dash' is not a block id"),
        ("1st", "'1st' is not a block id"),
        ("vars", "'vars' is reserved"),
        ("blocks", "'blocks' is reserved"),
        ("in", "'in' is reserved"),
        ("null", "'null' is reserved"),
        ("int", "'int' is reserved"),
        ("x" * 65, "is not a block id"),
    ],
)
def test_block_ids(block_id: str, description: str) -> None:
    [(field, [message])] = problems(blueprint(external(block_id))).items()
    assert field == "blocks[0].id"
    assert description in message


def test_duplicate_ids_and_self_needs() -> None:
    found = problems(blueprint(external("a", "a"), external("a")))
    assert found == {
        "blocks[0].needs[0]": ["a block cannot need itself"],
        "blocks[1].id": ["duplicate block id 'a' (first at blocks[0])"],
    }


def test_depends_cycles_are_cycles_too() -> None:
    found = problems(
        blueprint(
            external("a", depends="c.succeeded"),
            external("b", "a"),
            external("c", depends="b.failed || blocks.b.output == null"),
        )
    )
    assert found == {"blocks[1].needs[0]": ["dependency cycle: a -> c -> b -> a"]}


def test_variables_an_expression_may_read() -> None:
    found = problems(
        blueprint(
            external("a", when="a.succeeded"),  # block ids only in depends
            external("b", "a", when="[1, 2].all(x, x > limit)", input="${vars.nope}"),
            external("c", depends="a.succeeded && zz.failed"),
            vars={"early": "${blocks.a.output}", "late": "${vars.early}"},
        )
    )
    assert found["blocks[0].when"] == [
        "`a.succeeded`: unknown variable 'a' (this may read blocks, input, run, vars); "
        "a block's state reads as blocks.a"
    ]
    assert found["blocks[1].when"] == [
        "`[1, 2].all(x, x > limit)`: unknown variable 'limit' (this may read blocks, input, "
        "run, vars)"
    ]
    assert found["blocks[1].input"] == [
        "`vars.nope`: vars.nope is never set (declare it in vars or assign it in a set block)"
    ]
    assert found["blocks[2].depends"] == [
        "`a.succeeded && zz.failed`: unknown variable 'zz' (this may read blocks, input, run, "
        "vars and block ids)"
    ]
    assert "unknown variable 'blocks'" in found["vars.early"][0]
    assert "unknown variable 'vars'" in found["vars.late"][0]


def test_block_references_must_be_ancestors() -> None:
    bp = blueprint(
        external("a"),
        external("b", "a"),
        external("c", "b", input={"deep": "${blocks.a.output}", "self": "${blocks.c.output}"}),
        external("d", "a", when="blocks.b.succeeded"),
        external("e", depends="has(blocks.d) || blocks.c.succeeded", input="${blocks.c.output}"),
        output="${blocks.d.output} ${blocks['e'].output}",
    )
    found = problems(bp)
    assert list(found) == ["blocks[2].input.self", "blocks[3].when"]
    assert "blocks.c is not an ancestor" in found["blocks[2].input.self"][0]
    assert "blocks.b is not an ancestor" in found["blocks[3].when"][0]


def test_references_inside_strings_and_comprehensions_are_not_references() -> None:
    bp = blueprint(
        external(
            "a",
            when='"blocks.zz" != r"${vars.q}" && [1].exists(blocks, blocks == 1) // blocks.yy',
            input="${ {'a': '}'}.a }",
        )
    )
    assert validate_blueprint(bp) == []


def test_templates_report_each_placeholder() -> None:
    bp = blueprint(
        external("a", input={"x": "${1 +} and ${nope} and ${", "y": ["ok", "${}"]}),
    )
    found = problems(bp)
    assert found["blocks[0].input.x"] == ["`${` at offset 23 has no closing `}`"]
    assert found["blocks[0].input.y[1]"] == ["empty placeholder at offset 0"]


def test_external_block_settings() -> None:
    bp = blueprint(
        external(
            "a",
            external={
                "block": "ocr",
                "retry": {
                    "initialInterval": "-1s",
                    "backoffCoefficient": 0.5,
                    "maximumAttempts": -2,
                    "jitter": 1.5,
                },
                "timeouts": {"heartbeat": "-3s"},
            },
        ),
        external("b", external={"block": "ocr@1", "retry": {"maximumInterval": "0.5s"}}),
        {"id": "c", "input": 1, "transform": {}},
        taskQueue="",
        timeouts={},
        retry={"initialInterval": "2s", "maximumInterval": "1s"},
    )
    found = problems(bp)
    assert found == {
        "retry.maximum_interval": ["maximum_interval (1s) is shorter than initial_interval (2s)"],
        "blocks[0].external.block": ["'ocr' is not name@version (e.g. ocr@1)"],
        "blocks[0].external.task_queue": [
            "a task queue is required, here or as the blueprint's task_queue"
        ],
        "blocks[0].external.retry.initial_interval": ["must not be negative, got -1s"],
        "blocks[0].external.retry.backoff_coefficient": [
            "must be >= 1 (0 means the default), got 0.5"
        ],
        "blocks[0].external.retry.maximum_attempts": [
            "must be >= 1, 0 (not set: the default) or -1 (unlimited), got -2"
        ],
        "blocks[0].external.retry.jitter": ["must be between 0 and 1, got 1.5"],
        "blocks[0].external.timeouts.heartbeat": ["must not be negative, got -3s"],
        "blocks[0].external.timeouts": [
            "set start_to_close or schedule_to_close, here or in the blueprint's timeouts"
        ],
        "blocks[1].external.task_queue": [
            "a task queue is required, here or as the blueprint's task_queue"
        ],
        "blocks[1].external.retry.maximum_interval": [
            "maximum_interval (0.5s) is shorter than initial_interval (2s)"
        ],
        "blocks[1].external.timeouts": [
            "set start_to_close or schedule_to_close, here or in the blueprint's timeouts"
        ],
        "blocks[2].input": ["transform blocks take no input"],
    }


def test_every_duration_is_a_valid_one_under_its_documented_maximum() -> None:
    """Issue 17, item 4: durations out of protobuf's range or absurd were registered, and
    every start of the flow then answered INTERNAL (ValueError, OverflowError)."""
    bp = blueprint(external("a"), external("b"))
    bp.run_timeout.seconds = 4_600_000_000_000_000_000  # 4.6e18 s
    bp.retry.initial_interval.seconds = -4_600_000_000_000_000_000
    bp.timeouts.schedule_to_close.seconds = 400 * 86_400 * 3650  # 4,000 years
    own = bp.blocks[0].external
    own.timeouts.start_to_close.seconds = 8000 * 365 * 86_400  # 8,000 years
    own.retry.maximum_interval.seconds = 366 * 86_400
    bp.blocks[1].external.retry.initial_interval.nanos = -1
    found = problems(bp)
    out_of_range = "is not a valid duration (seconds="
    assert found["run_timeout"][0].startswith(out_of_range)
    assert found["retry.initial_interval"][0].startswith(out_of_range)
    assert found["timeouts.schedule_to_close"] == ["is 126144000000s, over the limit of 315360000s"]
    assert found["blocks[0].external.timeouts.start_to_close"] == [
        "is 252288000000s, over the limit of 315360000s"
    ]
    assert found["blocks[0].external.retry.maximum_interval"] == [
        "is 31622400s, over the limit of 31536000s"
    ]
    assert found["blocks[1].external.retry.initial_interval"] == [
        "must not be negative, got -0.000000001s"
    ]


def test_durations_at_their_maximum_register() -> None:
    bp = blueprint(external("a"))
    bp.run_timeout.seconds = bp.timeouts.schedule_to_close.seconds = 3650 * 86_400
    bp.retry.initial_interval.seconds = bp.retry.maximum_interval.seconds = 365 * 86_400
    assert problems(bp) == {}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_values_nested_too_deep_are_refused_at_registration() -> None:
    """Issue 17, item 2: a blueprint value nested deep enough that the stored flow, or the
    state of its runs, would not parse back."""
    bp = blueprint(
        external("a", input={"doc": _nested(24)}),  # 25 levels: the input's own object too
        {"id": "s", "needs": ["a"], "set": {"vars": {"x": [_nested(24)]}}},
        vars={"v": _nested(25), "ok": _nested(24)},
        inputSchema={"properties": {"doc": _nested(23)}},
        output=_nested(25),
    )
    found = problems(bp)
    too_deep = ["nests arrays and objects more than 24 levels deep"]
    # Each is named at its 25th level.
    assert found == {
        "blocks[0].input.doc" + ".a" * 23: too_deep,
        "blocks[1].set.vars.x[0]" + ".a" * 23: too_deep,
        "vars.v" + ".a" * 24: too_deep,
        "input_schema.properties.doc" + ".a" * 22: too_deep,
        "output" + ".a" * 24: too_deep,
    }


def test_a_stored_version_loads_without_the_later_bounds() -> None:
    """A version registered before the duration maxima and the depth bound still loads."""
    bp = blueprint(external("a"), vars={"v": _nested(30)})
    bp.timeouts.start_to_close.seconds = 3651 * 86_400
    bp.retry.initial_interval.seconds = 400 * 86_400
    assert set(problems(bp)) == {
        "timeouts.start_to_close",
        "retry.initial_interval",
        "vars.v" + ".a" * 24,
    }
    compile_blueprint(bp, stored=True)


def test_subflow_and_missing_kind() -> None:
    found = problems(
        blueprint(
            external("a"),
            {"id": "b", "subflow": {"flow": "child@1"}},
            {"id": "c"},
        )
    )
    assert found == {
        "blocks[2]": [
            "a block needs a kind, one of: external, switch, map, wait, signal, set, transform, "
            "subflow, succeed, fail, loop, event"
        ],
    }


def test_schemas_and_variables() -> None:
    found = problems(
        blueprint(
            {"id": "s", "set": {"vars": {"ok": 1, "not ok": 2}}},
            {"id": "empty", "set": {}},
            inputSchema={"type": "object", "properties": {"n": {"minimum": "three"}}},
            outputSchema={"required": "name"},
            vars={"9": 1},
        )
    )
    assert found == {
        "input_schema.properties.n.minimum": [
            'not a valid JSON Schema (draft 2020-12): "three" is not of type "number"'
        ],
        "output_schema.required": [
            'not a valid JSON Schema (draft 2020-12): "name" is not of type "array"'
        ],
        'blocks[0].set.vars["not ok"]': [
            "'not ok' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ],
        "blocks[1].set.vars": ["a set block assigns at least one variable"],
        'vars["9"]': ["'9' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"],
    }


def test_compile_raises_invalid_argument_with_every_violation() -> None:
    bp = blueprint(external("a", "zz"), external("b", when="1 +"))
    with pytest.raises(InvalidArgument) as raised:
        compile_blueprint(bp)
    assert [v.field for v in raised.value.violations] == ["blocks[0].needs[0]", "blocks[1].when"]


def test_input_is_checked_against_the_schema() -> None:
    compiled = compile_(
        external("a"),
        inputSchema={
            "type": "object",
            "properties": {
                "doc": {
                    "type": "object",
                    "properties": {"pages": {"type": "integer", "minimum": 1}},
                    "required": ["pages", "name"],
                },
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
    )
    assert compiled.validate_input({"doc": {"pages": 3, "name": "x"}, "tags": []}) == []
    # Whole numbers from google.protobuf.Value are doubles: they still count as integers.
    assert compiled.validate_input({"doc": {"pages": 3.0, "name": "x"}}) == []
    assert compiled.validate_input({"doc": {"pages": 0}, "tags": ["a", 2]}) == [
        FieldViolation("input.doc", '"name" is a required property'),
        FieldViolation("input.doc.pages", "0 is less than the minimum of 1"),
        FieldViolation("input.tags[1]", '2 is not of type "string"'),
    ]
    assert compile_(external("a")).validate_input({"anything": True}) == []


def test_effective_policies_merge_field_by_field() -> None:
    compiled = compile_(
        external(
            "a",
            external={
                "block": "ocr@2",
                "taskQueue": "gpu",
                "retry": {"maximumAttempts": 5, "nonRetryableErrorTypes": ["BadDoc"]},
                "timeouts": {"heartbeat": "10s"},
                "priority": 3,
                "affinity": "AFFINITY_RUN",
            },
        ),
        external("b"),
        retry={"initialInterval": "2s", "jitter": 0.5, "maximumAttempts": 2},
        timeouts={"startToClose": "60s", "scheduleToClose": "600s", "heartbeat": "30s"},
    )
    a = compiled.blocks["a"].policy
    b = compiled.blocks["b"].policy
    assert a is not None and b is not None
    assert (a.block_type, a.task_queue, a.priority) == ("ocr@2", "gpu", 3)
    assert a.affinity == blueprint_pb2.AFFINITY_RUN
    assert a.retry.initial_interval.ToSeconds() == 2
    assert a.retry.maximum_interval.ToSeconds() == 200  # 100 x initial
    assert (a.retry.backoff_coefficient, a.retry.jitter, a.retry.maximum_attempts) == (2, 0.5, 5)
    assert list(a.retry.non_retryable_error_types) == ["BadDoc"]
    assert a.timeouts.heartbeat.ToSeconds() == 10
    assert a.timeouts.start_to_close.ToSeconds() == 60
    assert a.timeouts.schedule_to_close.ToSeconds() == 600
    assert b.task_queue == "cpu"
    assert b.retry.maximum_attempts == 2
    assert b.timeouts.heartbeat.ToSeconds() == 30
    assert compiled.blocks["a"].kind == blueprint_pb2.BLOCK_KIND_EXTERNAL


def test_engine_defaults_when_nothing_is_set() -> None:
    """Bounded: a block nobody set a policy for fails its run after ten attempts, about five
    minutes of backoff, instead of retrying for ever."""
    policy = compile_(external("a")).blocks["a"].policy
    assert policy is not None
    retry = policy.retry
    assert retry.initial_interval.ToSeconds() == 1
    assert retry.maximum_interval.ToSeconds() == 100
    assert (retry.backoff_coefficient, retry.maximum_attempts) == (2.0, 10)
    assert retry.jitter == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("block", "blueprint_default", "effective"),
    [
        (0, 0, 10),  # neither sets it: the engine's default
        (0, 5, 5),  # 0 is "not set": the blueprint's value
        (0, -1, -1),
        (-1, 5, -1),  # -1 is unlimited, and overrides like any value
        (3, -1, 3),
        (1, 0, 1),
    ],
)
def test_maximum_attempts_zero_inherits_and_minus_one_is_unlimited(
    block: int, blueprint_default: int, effective: int
) -> None:
    bp = blueprint(
        external("a", external={"block": "work@1", "retry": {"maximumAttempts": block}}),
        retry={"maximumAttempts": blueprint_default},
    )
    assert problems(bp) == {}
    policy = compile_blueprint(bp).blocks["a"].policy
    assert policy is not None and policy.retry.maximum_attempts == effective


def test_maximum_attempts_below_minus_one_is_refused_on_the_blueprint_too() -> None:
    found = problems(blueprint(external("a"), retry={"maximumAttempts": -5}))
    assert found == {
        "retry.maximum_attempts": [
            "must be >= 1, 0 (not set: the default) or -1 (unlimited), got -5"
        ]
    }


def test_compile_copies_the_blueprint_and_orders_blocks() -> None:
    bp = blueprint(
        external("late", "mid"),
        external("first"),
        external("mid", "first"),
        external("other"),
    )
    compiled = compile_blueprint(bp)
    bp.name = "changed"
    assert compiled.name == "docs"
    assert [b.id for b in compiled.order] == ["first", "mid", "late", "other"]


def test_the_language_reference_example_is_valid() -> None:
    """docs/blueprints.md opens with a blueprint; it registers as written."""
    text = (Path(__file__).parents[3] / "docs" / "blueprints.md").read_text()
    example, *kinds = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    bp = json_format.ParseDict(yaml.safe_load(example), blueprint_pb2.Blueprint())
    assert problems(bp) == {}
    assert [b.id for b in bp.blocks] == ["classify", "ocr", "extract"]
    # The other examples are parts of a blueprint (tests/unit/interpreter/test_<kind>.py
    # register them) or lists of blocks, as a blueprint's `blocks` holds them: they parse.
    for text in kinds:
        loaded = yaml.safe_load(text)
        if isinstance(loaded, dict):
            json_format.ParseDict(loaded, blueprint_pb2.Blueprint())
            continue
        for block in loaded:
            json_format.ParseDict(block, blueprint_pb2.Block())


def test_the_block_kind_examples_are_valid() -> None:
    """docs/blueprints.md's examples of block kinds (lists of blocks) register as written,
    next to an external block for each block they need and do not show (`needs: [ocr]`)."""
    text = (Path(__file__).parents[3] / "docs" / "blueprints.md").read_text()
    examples = [yaml.safe_load(e) for e in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    block_lists = [e for e in examples if isinstance(e, list)]
    assert block_lists
    for blocks in block_lists:
        shown = {b["id"] for b in blocks}
        needed = [n for b in blocks for n in b.get("needs", []) if n not in shown]
        context = [external(n) for n in dict.fromkeys(needed)]
        assert problems(blueprint(*context, *blocks)) == {}, blocks


def test_a_value_with_no_kind_is_reported_wherever_it_is() -> None:
    bp = blueprint(
        external("a", input={"doc": "${input.doc}", "pages": [1, 2]}),
        {"id": "s", "needs": ["a"], "set": {"vars": {"n": 1}}},
        {"id": "t", "needs": ["a"], "transform": {"output": 1}},
        {"id": "f", "needs": ["t"], "fail": {"errorType": "Bad"}},
        {"id": "m", "mapBlock": {"items": "${input.list}"}},
        vars={"n": 0},
        inputSchema={"type": "object"},
    )
    # What a client gets by creating google.protobuf.Value() and never setting it.
    bp.blocks[0].input.struct_value.fields["extra"].SetInParent()
    bp.blocks[0].input.struct_value.fields["pages"].list_value.values.add()
    bp.blocks[1].set.vars["m"].SetInParent()
    bp.blocks[2].transform.output.Clear()
    bp.blocks[3].fail.details.SetInParent()
    bp.blocks[4].map_block.output.SetInParent()
    bp.vars["later"].SetInParent()
    bp.input_schema.fields["title"].SetInParent()
    bp.output.SetInParent()
    unset = [path for path, said in problems(bp).items() if "no kind set" in said[0]]
    assert unset == [
        "input_schema.title",
        "vars.later",
        "blocks[0].input.extra",
        "blocks[0].input.pages[2]",
        "blocks[1].set.vars.m",
        "blocks[2].transform.output",
        "blocks[3].fail.details",
        "blocks[4].map_block.output",
        "output",
    ]


def test_null_is_a_value() -> None:
    bp = blueprint(external("a", input={"x": None}), vars={"n": None}, output=None)
    assert validate_blueprint(bp) == []


def test_schema_violations_show_values_as_json() -> None:
    compiled = compile_(
        external("a"),
        inputSchema={
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "kind": {"enum": ["scan", None]},
                "strict": {"const": True},
                "meta": {"additionalProperties": False},
            },
        },
    )
    violations = compiled.validate_input(
        {"title": None, "kind": False, "strict": None, "meta": {"extra": None}}
    )
    assert [(v.field, v.description) for v in violations] == [
        ("input.kind", 'false is not one of ["scan", null]'),
        ("input.meta", 'Additional properties are not allowed ("extra" was unexpected)'),
        ("input.strict", "true was expected"),
        ("input.title", 'null is not of type "string"'),
    ]


def test_a_long_value_is_cut_short_in_a_violation() -> None:
    compiled = compile_(external("a"), inputSchema={"type": "array"})
    [violation] = compiled.validate_input({"text": "x" * 100_000})
    assert violation.description.startswith('{"text": "xxx')
    assert violation.description.endswith('xxx... is not of type "array"')
    assert len(violation.description) < 200
