"""Secrets for connector blocks: a block's input names a secret (`${secret:NAME}`) and the
worker resolves it, so history only ever holds the reference."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tideflow.errors import ApplicationError

REFERENCE = re.compile(r"\$\{secret:([A-Za-z0-9_]+)\}")
ENV_PREFIX = "TIDEFLOW_SECRET_"


@dataclass(frozen=True, slots=True)
class Secrets:
    """Where secrets come from: the environment (`TIDEFLOW_SECRET_<NAME>`) first, then a file
    `<directory>/<NAME>` (a mounted Kubernetes secret, say), trailing newline stripped."""

    directory: Path | None = None

    def get(self, name: str) -> str:
        value = os.environ.get(ENV_PREFIX + name)
        if value is not None:
            return value
        if self.directory is not None:
            path = self.directory / name
            if path.is_file():
                return path.read_text(encoding="utf-8").rstrip("\n")
        raise ApplicationError(
            f"secret {name!r} is not set (env {ENV_PREFIX}{name}"
            + (f" or file {self.directory / name})" if self.directory else ")"),
            type="SecretNotFound",
            non_retryable=True,
        )

    def resolve(self, text: str) -> str:
        """`text` with every `${secret:NAME}` replaced by the secret's value."""
        return REFERENCE.sub(lambda m: self.get(m.group(1)), text)

    def redact(self, text: str, references: list[str]) -> str:
        """`text` with the values of the secrets that `references` name replaced by `***`, so
        that an echoed credential never reaches a result or an error."""
        for reference in references:
            for name in REFERENCE.findall(reference):
                try:
                    value = self.get(name)
                except ApplicationError:
                    continue
                if value:
                    text = text.replace(value, "***")
        return text
