"""Every block kind, one module each (see `kinds.base` for the parts of a kind).

`KINDS` is the one registry: registration checks a block with the kind its `Block.kind` field
names, and the interpreter starts it and hands it events through the same entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import Command
from tideflow.blueprint.language.kinds import external, fail, loop, succeed, transform
from tideflow.blueprint.language.kinds import map as map_
from tideflow.blueprint.language.kinds import set as set_
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Plan, Site
from tideflow.blueprint.language.kinds.external import ExternalPlan, ExternalPolicy

__all__ = [
    "BY_KIND",
    "KINDS",
    "BlockContext",
    "ExternalPlan",
    "ExternalPolicy",
    "Kind",
    "Plan",
    "Site",
]


def _not_yet(
    name: str, field: str, kind: blueprint_pb2.BlockKind.ValueType, *, takes_input: bool = False
) -> Kind:
    """A kind the language declares and the engine does not run yet: registration says so."""

    def check(site: Site) -> None:
        site.report(site.path, f"{name} blocks are not supported yet")

    def start(plan: object, block: BlockContext) -> Sequence[Command]:
        raise AssertionError(f"{name} blocks do not pass registration")  # pragma: no cover

    return Kind(
        name=name, field=field, kind=kind, check=check, start=start, takes_input=takes_input
    )


KINDS: Mapping[str, Kind] = {
    kind.field: kind
    for kind in (
        external.KIND,
        _not_yet("switch", "switch_block", blueprint_pb2.BLOCK_KIND_SWITCH),
        map_.KIND,
        _not_yet("wait", "wait", blueprint_pb2.BLOCK_KIND_WAIT),
        _not_yet("signal", "signal", blueprint_pb2.BLOCK_KIND_SIGNAL),
        set_.KIND,
        transform.KIND,
        _not_yet("subflow", "subflow", blueprint_pb2.BLOCK_KIND_SUBFLOW, takes_input=True),
        succeed.KIND,
        fail.KIND,
        loop.KIND,
    )
}
"""By the name of the `Block.kind` oneof field, in the proto's order."""

BY_KIND: Mapping[blueprint_pb2.BlockKind.ValueType, Kind] = {k.kind: k for k in KINDS.values()}
