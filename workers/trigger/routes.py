"""The route table: which webhook path does what, checked at start with every error named."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tideflow.blueprint.language.cel import CelProgram, CelSyntaxError, compile_cel

SECRET_ENV_PREFIX = "TIDEFLOW_SECRET_"


class RouteTableError(ValueError):
    """The route table is wrong; the message names each offending key."""


def _cel(source: str) -> str:
    try:
        compile_cel(source)
    except CelSyntaxError as e:
        raise ValueError(f"not a CEL expression: {e}") from None
    return source


Expression = Annotated[str, Field(min_length=1)]


class HmacAuth(BaseModel):
    """HMAC-SHA256 of the raw body with a shared secret, sent as `sha256=<hex>`."""

    model_config = ConfigDict(extra="forbid")
    secret: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    """Its name: env TIDEFLOW_SECRET_<secret>, else the file <secrets-dir>/<secret>."""
    header: str = "X-Tideflow-Signature"


class Auth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hmac_sha256: HmacAuth | None = None
    api_keys_sha256: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = []
    """SHA-256 (hex) of each API key a caller may send as `Authorization: Bearer <key>`."""


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(pattern=r"^/[A-Za-z0-9._~/-]*$")
    namespace: str = "default"
    action: Literal["signal_with_start", "publish"]
    auth: Auth | None = None
    allow_unauthenticated: bool = False
    # signal_with_start
    flow: str = ""
    task_queue: str = ""
    run_id: Expression | None = None
    signal: str = ""
    input: Expression = "body"
    signal_input: Expression = "body"
    # publish
    event_type: str = ""
    correlation_key: Expression = "''"
    payload: Expression = "body"

    @field_validator("run_id", "input", "signal_input", "correlation_key", "payload")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return None if value is None else _cel(value)

    @model_validator(mode="after")
    def _complete(self) -> Route:
        missing = []
        if self.action == "signal_with_start":
            missing = [k for k in ("flow", "run_id", "signal") if not getattr(self, k)]
        elif not self.event_type:
            missing = ["event_type"]
        if missing:
            raise ValueError(f"action {self.action} needs {', '.join(missing)}")
        has_auth = self.auth is not None and (self.auth.hmac_sha256 or self.auth.api_keys_sha256)
        if not has_auth and not self.allow_unauthenticated:
            raise ValueError("set auth (hmac_sha256 or api_keys_sha256) or allow_unauthenticated")
        return self

    @property
    def flow_name(self) -> str:
        return self.flow.split("@", 1)[0]

    @property
    def flow_version(self) -> int:
        _, _, version = self.flow.partition("@")
        return int(version) if version.isdigit() else 0

    def program(self, field: str) -> CelProgram:
        source = getattr(self, field)
        assert isinstance(source, str)
        return compile_cel(source)


class RouteTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: list[Route] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_paths(self) -> RouteTable:
        paths = [r.path for r in self.routes]
        duplicates = sorted({p for p in paths if paths.count(p) > 1})
        if duplicates:
            raise ValueError(f"paths given twice: {', '.join(duplicates)}")
        return self


def load(path: Path) -> RouteTable:
    """The route table in `path`; RouteTableError naming every offending key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise RouteTableError(f"{path}: {e}") from None
    try:
        return RouteTable.model_validate(raw)
    except ValidationError as e:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
            for error in e.errors()
        ]
        raise RouteTableError(f"{path}:\n  " + "\n  ".join(problems)) from None


def secret(name: str, directory: Path | None) -> bytes:
    value = os.environ.get(SECRET_ENV_PREFIX + name)
    if value is None and directory is not None and (directory / name).is_file():
        value = (directory / name).read_text(encoding="utf-8").rstrip("\n")
    if value is None:
        raise RouteTableError(f"secret {name} is not set (env {SECRET_ENV_PREFIX}{name})")
    return value.encode()


def authenticated(
    auth: Auth | None, body: bytes, headers: dict[str, str], secrets: dict[str, bytes]
) -> bool:
    """Whether the request passes one of the route's methods (constant-time comparisons)."""
    if auth is None:
        return False
    if auth.hmac_sha256 is not None:
        sent = headers.get(auth.hmac_sha256.header.lower(), "")
        expected = hmac.new(secrets[auth.hmac_sha256.secret], body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(sent.encode(), f"sha256={expected}".encode()):
            return True
    bearer = headers.get("authorization", "")
    if auth.api_keys_sha256 and bearer.startswith("Bearer "):
        digest = hashlib.sha256(bearer.removeprefix("Bearer ").encode()).hexdigest()
        return any(hmac.compare_digest(digest, known) for known in auth.api_keys_sha256)
    return False
