"""The blueprint builder: the messages it builds, and validation shared with the server."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint import (
    JSON,
    UNLIMITED,
    Blueprint,
    BlueprintError,
    Retry,
    Timeouts,
    validate,
)
from tideflow_server.history.interpreter import compile_blueprint, validate_blueprint
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument

# The demo's first flow (demo/intake.yaml has grown switch, signal and map blocks since),
# kept here as the builder's reference: external blocks, needs, when, retry and timeouts.
LINEAR_INTAKE = """\
name: intake
version: 1
task_queue: cpu
timeouts:
  start_to_close: 10s
retry:
  initial_interval: 0.5s
  maximum_attempts: 3
blocks:
  - id: intake
    external:
      block: intake@1
      timeouts:
        start_to_close: 10s
        heartbeat: 5s
    input: "${input}"

  - id: classify
    needs: [intake]
    external:
      block: classify@1
      task_queue: ml
    input: {text: "${blocks.intake.output.text}"}

  - id: extract_amounts
    needs: [classify]
    when: "blocks.classify.output.label in ['invoice', 'receipt']"
    external: {block: extract_amounts@1}
    input: {text: "${blocks.intake.output.text}"}

  - id: extract_dates
    needs: [classify]
    external: {block: extract_dates@1}
    input: {text: "${blocks.intake.output.text}"}

  - id: extract_parties
    needs: [classify]
    external: {block: extract_parties@1}
    input: {text: "${blocks.intake.output.text}"}

  - id: validate
    needs: [extract_amounts, extract_dates, extract_parties]
    external: {block: validate@1}
    input:
      classification: "${blocks.classify.output}"
      amounts: "${blocks.extract_amounts.output}"
      dates: "${blocks.extract_dates.output}"
      parties: "${blocks.extract_parties.output}"

output:
  document: "${input.name}"
  pages: "${blocks.intake.output.pages}"
  words: "${blocks.intake.output.words}"
  label: "${blocks.classify.output.label}"
  confidence: "${blocks.classify.output.confidence}"
  amounts: "${blocks.extract_amounts.output}"
  dates: "${blocks.extract_dates.output.dates}"
  parties: "${blocks.extract_parties.output.parties}"
  validation: "${blocks.validate.output}"
"""


def intake() -> Blueprint:
    """LINEAR_INTAKE, written with the builder."""
    bp = Blueprint(
        "intake",
        version=1,
        task_queue="cpu",
        start_to_close=timedelta(seconds=10),
        retry=Retry(initial_interval=timedelta(seconds=0.5), maximum_attempts=3),
    )
    text: JSON = {"text": "${blocks.intake.output.text}"}
    first = bp.external(
        "intake",
        block="intake@1",
        input="${input}",
        timeouts=Timeouts(start_to_close=timedelta(seconds=10), heartbeat=timedelta(seconds=5)),
    )
    classify = bp.external(
        "classify", block="classify@1", task_queue="ml", needs=[first], input=text
    )
    amounts = bp.external(
        "extract_amounts",
        block="extract_amounts@1",
        needs=[classify],
        when="blocks.classify.output.label in ['invoice', 'receipt']",
        input=text,
    )
    bp.external("extract_dates", block="extract_dates@1", needs=["classify"], input=text)
    bp.external("extract_parties", block="extract_parties@1", needs=[classify], input=text)
    bp.external(
        "validate",
        block="validate@1",
        needs=[amounts, "extract_dates", "extract_parties"],
        input={
            "classification": "${blocks.classify.output}",
            "amounts": "${blocks.extract_amounts.output}",
            "dates": "${blocks.extract_dates.output}",
            "parties": "${blocks.extract_parties.output}",
        },
    )
    bp.output(
        {
            "document": "${input.name}",
            "pages": "${blocks.intake.output.pages}",
            "words": "${blocks.intake.output.words}",
            "label": "${blocks.classify.output.label}",
            "confidence": "${blocks.classify.output.confidence}",
            "amounts": "${blocks.extract_amounts.output}",
            "dates": "${blocks.extract_dates.output.dates}",
            "parties": "${blocks.extract_parties.output.parties}",
            "validation": "${blocks.validate.output}",
        }
    )
    return bp


def linear_dict() -> dict[str, Any]:
    message = json_format.ParseDict(yaml.safe_load(LINEAR_INTAKE), blueprint_pb2.Blueprint())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_builds_the_linear_intake_blueprint() -> None:
    bp = intake()
    message = bp.build()
    assert bp.to_dict() == linear_dict()
    assert json_format.MessageToDict(message, preserving_proto_field_name=True) == linear_dict()
    compile_blueprint(message)  # the server accepts it


def test_round_trip_dict_builder_dict() -> None:
    data = linear_dict()
    assert Blueprint.from_dict(data).to_dict() == data
    again = Blueprint.from_dict(yaml.safe_load(LINEAR_INTAKE))
    assert again.to_dict() == data
    assert Blueprint.from_dict(yaml.safe_load(intake().to_json())).to_dict() == data


def test_system_blocks() -> None:
    bp = Blueprint("kinds", version=1, vars={"seen": False})
    t = bp.transform("t", output={"n": "${input.n}"})
    bp.set("mark", vars={"seen": True}, needs=[t])
    bp.succeed("done", output="${blocks.t.output}", needs=["mark"], when="vars.seen")
    bp.fail("bad", error_type="Bad", message="no", details={"x": 1}, needs=["mark"])
    message = bp.build()
    assert [b.WhichOneof("kind") for b in message.blocks] == [
        "transform",
        "set",
        "succeed",
        "fail",
    ]
    assert validate(message) == []


def bad() -> Blueprint:
    bp = Blueprint(
        "bad",
        version=1,
        task_queue="q",
        start_to_close=timedelta(seconds=1),
        input_schema={"type": "no-such-type"},
    )
    bp.external("a", block="a@1", needs=["c"])
    bp.external("b", block="b@1", needs=["a", "nowhere"], when="1 +")
    bp.external("c", block="c@1", needs=["b"], input="${blocks.zz.output}")
    return bp


def test_build_reports_what_the_server_reports() -> None:
    bp = bad()
    with pytest.raises(BlueprintError) as raised:
        bp.build()
    server = validate_blueprint(bp.message)
    assert raised.value.violations == server
    fields = {v.field for v in server}
    expected = {"input_schema.type", "blocks[1].needs[1]", "blocks[1].when", "blocks[2].input"}
    assert expected <= fields
    assert any("dependency cycle" in v.description for v in server)
    with pytest.raises(InvalidArgument) as compiled:
        compile_blueprint(bp.message)
    assert compiled.value.violations == raised.value.violations


def test_one_violation_type() -> None:
    assert FieldViolation("a", "b") == validate(bad().message)[0].__class__("a", "b")
    assert isinstance(validate(bad().message)[0], FieldViolation)


def test_version_zero_is_checked_as_the_next_version() -> None:
    bp = Blueprint("v0", task_queue="q", start_to_close=timedelta(seconds=1))
    bp.external("a", block="a@1")
    assert bp.build().version == 0
    assert [v.field for v in validate_blueprint(bp.message)] == ["version"]


def test_retry_unlimited_and_unset_attempts() -> None:
    """UNLIMITED (-1) is kept; 0 (the field left alone) takes the blueprint's value, then the
    server's bounded default."""
    bp = Blueprint("retries", version=1, task_queue="cpu", start_to_close=timedelta(seconds=5))
    bp.external("forever", block="a@1", retry=Retry(maximum_attempts=UNLIMITED))
    bp.external("default", block="a@1", retry=Retry(initial_interval=timedelta(seconds=2)))
    compiled = compile_blueprint(bp.build())
    attempts = {}
    for block_id in ("forever", "default"):
        policy = compiled.blocks[block_id].policy
        assert policy is not None
        attempts[block_id] = policy.retry.maximum_attempts
    assert attempts == {"forever": -1, "default": 10}
