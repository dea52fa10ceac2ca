"""Blueprint builder: Python code that produces a `tideflow.api.v1.Blueprint`, validated
locally with the rules the server applies at registration.

    bp = Blueprint("intake", version=1, task_queue="cpu", start_to_close=timedelta(seconds=30))
    classify = bp.external("classify", block="classify@1", input="${input}", task_queue="ml")
    bp.external("extract", block="extract@1", needs=[classify],
                when="blocks.classify.output.label == 'invoice'")
    bp.output({"label": "${blocks.classify.output.label}"})
    message = bp.build()  # raises BlueprintError listing every violation, with its path

Input, output and variable values are JSON whose strings may hold `${...}` templates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import json_format

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint._policy import UNLIMITED, Retry, Timeouts, duration
from tideflow.blueprint.language.errors import LanguageError
from tideflow.blueprint.language.model import JSON
from tideflow.blueprint.language.validate import DEFAULT_MAX_BLOCKS, validate_blueprint
from tideflow.blueprint.language.values import json_to_struct, json_to_value
from tideflow.errors import FieldViolation

__all__ = [
    "JSON",
    "UNLIMITED",
    "BlockRef",
    "Blueprint",
    "BlueprintError",
    "FieldViolation",
    "Retry",
    "Timeouts",
    "validate",
]


class BlueprintError(LanguageError):
    """The blueprint breaks the registration rules; `violations` lists every problem with the
    path the server would report (`blocks[2].needs[0]`)."""


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A block added to a builder; pass it in `needs`."""

    id: str


Needs = Iterable[BlockRef | str]


def validate(
    blueprint: blueprint_pb2.Blueprint, *, max_blocks: int = DEFAULT_MAX_BLOCKS
) -> list[FieldViolation]:
    """Every problem the server's registration would report for `blueprint`; empty when it can
    be registered. Version 0 (the server assigns the next one) is checked as version 1."""
    if blueprint.version == 0:
        copy = blueprint_pb2.Blueprint()
        copy.CopyFrom(blueprint)
        copy.version = 1
        blueprint = copy
    return validate_blueprint(blueprint, max_blocks=max_blocks)


class Blueprint:
    """Builds one version of a blueprint flow. Blocks are added in order; `build` validates."""

    def __init__(
        self,
        name: str,
        *,
        version: int = 0,
        description: str = "",
        task_queue: str = "",
        retry: Retry | None = None,
        timeouts: Timeouts | None = None,
        start_to_close: timedelta | None = None,
        run_timeout: timedelta | None = None,
        input_schema: Mapping[str, JSON] | None = None,
        output_schema: Mapping[str, JSON] | None = None,
        vars: Mapping[str, JSON] | None = None,
    ) -> None:
        """`version` 0 lets the server assign the next version. `start_to_close` is a short
        form of `timeouts=Timeouts(start_to_close=...)`, the default of every external block."""
        m = blueprint_pb2.Blueprint(
            name=name, version=version, description=description, task_queue=task_queue
        )
        if retry is not None:
            m.retry.CopyFrom(retry.to_proto())
        if timeouts is not None:
            m.timeouts.CopyFrom(timeouts.to_proto())
        if start_to_close is not None:
            m.timeouts.start_to_close.CopyFrom(duration(start_to_close))
        if run_timeout is not None:
            m.run_timeout.CopyFrom(duration(run_timeout))
        if input_schema is not None:
            m.input_schema.CopyFrom(json_to_struct(input_schema))
        if output_schema is not None:
            m.output_schema.CopyFrom(json_to_struct(output_schema))
        for key, value in (vars or {}).items():
            m.vars[key].CopyFrom(json_to_value(value))
        self._message = m

    # -- blocks --------------------------------------------------------------------------

    def external(
        self,
        id: str,
        *,
        block: str,
        input: JSON = None,
        task_queue: str = "",
        retry: Retry | None = None,
        timeouts: Timeouts | None = None,
        start_to_close: timedelta | None = None,
        priority: int = 0,
        affinity: blueprint_pb2.Affinity.ValueType = blueprint_pb2.AFFINITY_UNSPECIFIED,
        affinity_key: str = "",
        fairness_key: str = "",
        sticky_schedule_to_start: timedelta | None = None,
        needs: Needs = (),
        depends: str = "",
        when: str = "",
        description: str = "",
    ) -> BlockRef:
        """A block run by a worker: `block` is its type, "name@version". `input=None` sends
        no input. `priority`: 1 (first) to 5 (last), 0 for 3. `affinity_key` and
        `fairness_key` are templates, e.g. "${input.model}"."""
        b = self._block(id, needs=needs, depends=depends, when=when, description=description)
        ext = b.external
        ext.block, ext.task_queue, ext.priority, ext.affinity = (
            block,
            task_queue,
            priority,
            affinity,
        )
        ext.affinity_key, ext.fairness_key = affinity_key, fairness_key
        if sticky_schedule_to_start is not None:
            ext.sticky_schedule_to_start.CopyFrom(duration(sticky_schedule_to_start))
        if retry is not None:
            ext.retry.CopyFrom(retry.to_proto())
        if timeouts is not None:
            ext.timeouts.CopyFrom(timeouts.to_proto())
        if start_to_close is not None:
            ext.timeouts.start_to_close.CopyFrom(duration(start_to_close))
        if input is not None:
            b.input.CopyFrom(json_to_value(input))
        return BlockRef(id)

    def set(
        self,
        id: str,
        *,
        vars: Mapping[str, JSON],
        needs: Needs = (),
        depends: str = "",
        when: str = "",
        description: str = "",
    ) -> BlockRef:
        """Assign run variables (`${vars.<name>}`)."""
        b = self._block(id, needs=needs, depends=depends, when=when, description=description)
        b.set.SetInParent()
        for key, value in vars.items():
            b.set.vars[key].CopyFrom(json_to_value(value))
        return BlockRef(id)

    def transform(
        self,
        id: str,
        *,
        output: JSON,
        needs: Needs = (),
        depends: str = "",
        when: str = "",
        description: str = "",
    ) -> BlockRef:
        """Compute an output from the data wiring, with no side effect."""
        b = self._block(id, needs=needs, depends=depends, when=when, description=description)
        b.transform.output.CopyFrom(json_to_value(output))
        return BlockRef(id)

    def succeed(
        self,
        id: str,
        *,
        output: JSON = None,
        needs: Needs = (),
        depends: str = "",
        when: str = "",
        description: str = "",
    ) -> BlockRef:
        """End the run successfully; `output=None` uses the blueprint's output."""
        b = self._block(id, needs=needs, depends=depends, when=when, description=description)
        b.succeed.SetInParent()
        if output is not None:
            b.succeed.output.CopyFrom(json_to_value(output))
        return BlockRef(id)

    def fail(
        self,
        id: str,
        *,
        error_type: str = "",
        message: str = "",
        details: JSON = None,
        needs: Needs = (),
        depends: str = "",
        when: str = "",
        description: str = "",
    ) -> BlockRef:
        """Fail as an external block raising an application error would."""
        b = self._block(id, needs=needs, depends=depends, when=when, description=description)
        b.fail.error_type, b.fail.message = error_type, message
        if details is not None:
            b.fail.details.CopyFrom(json_to_value(details))
        return BlockRef(id)

    def output(self, value: JSON) -> None:
        """The run result, rendered when every block is done."""
        self._message.output.CopyFrom(json_to_value(value))

    def var(self, name: str, value: JSON) -> None:
        """An initial variable."""
        self._message.vars[name].CopyFrom(json_to_value(value))

    # -- results -------------------------------------------------------------------------

    @property
    def message(self) -> blueprint_pb2.Blueprint:
        """A copy of the message as built so far, not validated."""
        copy = blueprint_pb2.Blueprint()
        copy.CopyFrom(self._message)
        return copy

    def validate(self, *, max_blocks: int = DEFAULT_MAX_BLOCKS) -> list[FieldViolation]:
        """Every problem registration would report; empty when none."""
        return validate(self._message, max_blocks=max_blocks)

    def build(self, *, max_blocks: int = DEFAULT_MAX_BLOCKS) -> blueprint_pb2.Blueprint:
        """The Blueprint message; raises BlueprintError listing every problem."""
        violations = self.validate(max_blocks=max_blocks)
        if violations:
            raise BlueprintError(violations)
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The proto JSON mapping, with the field names of the YAML/JSON files (`task_queue`)."""
        return json_format.MessageToDict(self._message, preserving_proto_field_name=True)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_message(cls, message: blueprint_pb2.Blueprint) -> Blueprint:
        """A builder starting from an existing blueprint, to add to it."""
        builder = cls(message.name)
        builder._message.CopyFrom(message)
        return builder

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Blueprint:
        """A builder from the JSON/YAML form (either field-name spelling)."""
        return cls.from_message(json_format.ParseDict(dict(data), blueprint_pb2.Blueprint()))

    # -- internals -----------------------------------------------------------------------

    def _block(
        self, id: str, *, needs: Needs, depends: str, when: str, description: str
    ) -> blueprint_pb2.Block:
        block = self._message.blocks.add(id=id, depends=depends, when=when)
        block.description = description
        block.needs.extend(n.id if isinstance(n, BlockRef) else n for n in needs)
        return block
