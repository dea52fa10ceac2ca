"""The blueprint interpreter as history runs it.

The language (checks, plans, block kinds, `decide`) is public and owned by the SDK,
`tideflow.blueprint.language`, which the server pins exactly: the builder checks with the
same rules, and a run decides the same on every host. This package adds what is the
server's: compiling a blueprint into InvalidArgument at registration (`compile_blueprint`),
and applying commands to a run's state (`appliers`).
"""

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import (
    AwaitEvent,
    AwaitSignal,
    CancelTimer,
    CatchFailure,
    Command,
    Compensation,
    CompleteBlock,
    CompleteRun,
    ConsumeSignal,
    Escalate,
    FailBlock,
    FailRun,
    RecordItem,
    RecordScopes,
    ScheduleExternal,
    SkipBlock,
    StartChild,
    StartLoop,
    StartMap,
    StartTimer,
)
from tideflow.blueprint.language.compiled import CompiledBlock, CompiledBlueprint, split_path
from tideflow.blueprint.language.decide import decide, deliver, initial_vars
from tideflow.blueprint.language.errors import LanguageError
from tideflow.blueprint.language.events import EventReceived, SignalReceived, TimerFired
from tideflow.blueprint.language.kinds import ExternalPolicy
from tideflow.blueprint.language.model import (
    JSON,
    BlockError,
    BlockView,
    ItemOutcome,
    Limits,
    RunView,
    Scopes,
    Signal,
)
from tideflow.blueprint.language.policy import attempts_exhausted, retry_delay
from tideflow.blueprint.language.templates import (
    Env,
    Expression,
    ExpressionError,
    Template,
    run_variables,
)
from tideflow.blueprint.language.validate import DEFAULT_MAX_BLOCKS, validate_blueprint
from tideflow.blueprint.language.values import (
    NotJSON,
    json_to_struct,
    json_to_value,
    struct_to_json,
    value_to_json,
)
from tideflow_server.rpc.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_BLOCKS",
    "JSON",
    "AwaitEvent",
    "AwaitSignal",
    "BlockError",
    "BlockView",
    "CancelTimer",
    "CatchFailure",
    "Command",
    "Compensation",
    "CompiledBlock",
    "CompiledBlueprint",
    "CompleteBlock",
    "CompleteRun",
    "ConsumeSignal",
    "Env",
    "Escalate",
    "EventReceived",
    "Expression",
    "ExpressionError",
    "ExternalPolicy",
    "FailBlock",
    "FailRun",
    "ItemOutcome",
    "Limits",
    "NotJSON",
    "RecordItem",
    "RecordScopes",
    "RunView",
    "ScheduleExternal",
    "Scopes",
    "Signal",
    "SignalReceived",
    "SkipBlock",
    "StartChild",
    "StartLoop",
    "StartMap",
    "StartTimer",
    "Template",
    "TimerFired",
    "attempts_exhausted",
    "compile_blueprint",
    "decide",
    "deliver",
    "initial_vars",
    "json_to_struct",
    "json_to_value",
    "retry_delay",
    "run_variables",
    "split_path",
    "struct_to_json",
    "validate_blueprint",
    "value_to_json",
]


def compile_blueprint(
    bp: blueprint_pb2.Blueprint,
    *,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    stored: bool = False,
    limits: Limits | None = None,
) -> CompiledBlueprint:
    """Check and compile `bp`; INVALID_ARGUMENT listing every problem with its path.
    `stored`: a version registered already (see `CompiledBlueprint.compile`). `limits`: the
    server's `blueprint.*` settings."""
    try:
        return CompiledBlueprint.compile(bp, max_blocks=max_blocks, stored=stored, limits=limits)
    except LanguageError as e:
        raise InvalidArgument(e.violations) from e
