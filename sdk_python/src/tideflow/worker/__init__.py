"""Block workers: run `@block` functions for the external blocks of Tideflow flows."""

from tideflow.worker._block import (
    BlockCancelled,
    BlockContext,
    BlockDefinition,
    BlockInfo,
    block,
    context,
)
from tideflow.worker._worker import Worker

__all__ = [
    "BlockCancelled",
    "BlockContext",
    "BlockDefinition",
    "BlockInfo",
    "Worker",
    "block",
    "context",
]
