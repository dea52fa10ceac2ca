"""Connector blocks' pure parts: URL templates, secret references and their redaction, and
SQL values as JSON."""

from __future__ import annotations

import datetime
import decimal
import uuid
from pathlib import Path

import pytest

from tideflow.errors import ApplicationError
from workers.connectors.http import render_url
from workers.connectors.secrets import Secrets
from workers.connectors.sql import to_json


def test_url_templates_fill_and_encode_params() -> None:
    url = render_url("https://api.example/orders/{id}/items", {"id": "a b/c"})
    assert url == "https://api.example/orders/a%20b%2Fc/items"


def test_a_url_template_naming_a_missing_param_is_bad_input() -> None:
    with pytest.raises(ApplicationError) as raised:
        render_url("https://api.example/{id}", {})
    assert (raised.value.type, raised.value.non_retryable) == ("BadInput", True)


def test_secrets_come_from_the_environment_then_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "FROM_FILE").write_text("file-value\n")
    monkeypatch.setenv("TIDEFLOW_SECRET_FROM_ENV", "env-value")
    secrets = Secrets(tmp_path)
    resolved = secrets.resolve("a ${secret:FROM_ENV} b ${secret:FROM_FILE}")
    assert resolved == "a env-value b file-value"


def test_an_unknown_secret_fails_non_retryable(tmp_path: Path) -> None:
    with pytest.raises(ApplicationError) as raised:
        Secrets(tmp_path).resolve("Bearer ${secret:NOPE}")
    assert (raised.value.type, raised.value.non_retryable) == ("SecretNotFound", True)


def test_redaction_hides_the_values_the_references_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEFLOW_SECRET_TOKEN", "hunter2")
    redacted = Secrets().redact("echo: Bearer hunter2", ["Bearer ${secret:TOKEN}"])
    assert redacted == "echo: Bearer ***"


def test_sql_values_become_json() -> None:
    row = {
        "d": datetime.date(2024, 3, 1),
        "n": decimal.Decimal("40.10"),
        "b": b"\x00\x01",
        "u": uuid.UUID(int=1),
        "a": [decimal.Decimal("1.5")],
    }
    assert to_json(row) == {
        "d": "2024-03-01",
        "n": "40.10",
        "b": "AAE=",
        "u": "00000000-0000-0000-0000-000000000001",
        "a": ["1.5"],
    }
