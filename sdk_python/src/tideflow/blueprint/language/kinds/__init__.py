"""Every block kind, one module each (see `kinds.base` for the parts of a kind).

`KINDS` is the one registry: registration checks a block with the kind its `Block.kind` field
names, and the interpreter starts it and hands it events through the same entry.
"""

from __future__ import annotations

from collections.abc import Mapping

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.kinds import (
    event,
    external,
    fail,
    loop,
    signal,
    subflow,
    succeed,
    switch,
    transform,
    wait,
)
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


KINDS: Mapping[str, Kind] = {
    kind.field: kind
    for kind in (
        external.KIND,
        switch.KIND,
        map_.KIND,
        wait.KIND,
        signal.KIND,
        set_.KIND,
        transform.KIND,
        subflow.KIND,
        succeed.KIND,
        fail.KIND,
        loop.KIND,
        event.KIND,
    )
}
"""By the name of the `Block.kind` oneof field, in the proto's order."""

BY_KIND: Mapping[blueprint_pb2.BlockKind.ValueType, Kind] = {k.kind: k for k in KINDS.values()}
