"""The blueprint interpreter: validation at registration, deterministic decisions at run time."""

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

__all__ = [
    "JSON",
    "BlockError",
    "BlockView",
    "Command",
    "CompleteRun",
    "CompleteSystem",
    "FailBlock",
    "FailRun",
    "RunView",
    "ScheduleExternal",
    "SkipBlock",
]
