"""The blueprint interpreter: validation at registration, deterministic decisions at run time.

The blueprint language itself (validation, templates, CEL, references) lives in the SDK,
`tideflow.blueprint.language`, so the builder validates with the same rules."""

from tideflow.blueprint.language.kinds import ExternalPolicy
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
from tideflow_server.history.interpreter._model import (
    JSON,
    BlockError,
    BlockView,
    Command,
    CompleteRun,
    CompleteSystem,
    FailBlock,
    FailRun,
    RunView,
    ScheduleExternal,
    SkipBlock,
)
from tideflow_server.history.interpreter.compiled import (
    CompiledBlock,
    CompiledBlueprint,
    validate_input,
)
from tideflow_server.history.interpreter.decide import decide, initial_vars

__all__ = [
    "DEFAULT_MAX_BLOCKS",
    "JSON",
    "BlockError",
    "BlockView",
    "Command",
    "CompiledBlock",
    "CompiledBlueprint",
    "CompleteRun",
    "CompleteSystem",
    "Env",
    "Expression",
    "ExpressionError",
    "ExternalPolicy",
    "FailBlock",
    "FailRun",
    "NotJSON",
    "RunView",
    "ScheduleExternal",
    "SkipBlock",
    "Template",
    "attempts_exhausted",
    "decide",
    "initial_vars",
    "json_to_struct",
    "json_to_value",
    "retry_delay",
    "run_variables",
    "struct_to_json",
    "validate_blueprint",
    "validate_input",
    "value_to_json",
]
