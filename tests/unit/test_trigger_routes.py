"""tideflow-trigger's route table checks and request authentication."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.trigger.routes import Auth, RouteTableError, authenticated, load

SIGNAL_ROUTE: dict[str, Any] = {
    "path": "/hooks/a",
    "action": "signal_with_start",
    "flow": "orders",
    "run_id": "body.id",
    "signal": "event",
    "allow_unauthenticated": True,
}


def table(tmp_path: Path, *routes: dict[str, Any]) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": list(routes)}))
    return path


def test_a_good_table_loads(tmp_path: Path) -> None:
    loaded = load(table(tmp_path, {**SIGNAL_ROUTE, "flow": "orders@2"}))
    (route,) = loaded.routes
    assert (route.flow_name, route.flow_version, route.namespace) == ("orders", 2, "default")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"flow": ""}, "routes.0: Value error, action signal_with_start needs flow"),
        ({"run_id": "body.("}, "routes.0.run_id"),
        ({"allow_unauthenticated": False}, "set auth"),
        ({"action": "start"}, "routes.0.action"),
        ({"colour": "blue"}, "routes.0.colour"),
        ({"path": "no-slash"}, "routes.0.path"),
    ],
)
def test_a_wrong_route_is_named(tmp_path: Path, change: dict[str, Any], named: str) -> None:
    with pytest.raises(RouteTableError) as raised:
        load(table(tmp_path, {**SIGNAL_ROUTE, **change}))
    assert named in str(raised.value)


def test_paths_are_unique(tmp_path: Path) -> None:
    with pytest.raises(RouteTableError, match="paths given twice: /hooks/a"):
        load(table(tmp_path, SIGNAL_ROUTE, SIGNAL_ROUTE))


def test_hmac_and_api_keys_authenticate() -> None:
    body = b'{"id": 1}'
    key_hash = hashlib.sha256(b"k1").hexdigest()
    auth = Auth.model_validate({"hmac_sha256": {"secret": "S"}, "api_keys_sha256": [key_hash]})
    secrets = {"S": b"shh"}
    good = "sha256=" + hmac.new(b"shh", body, hashlib.sha256).hexdigest()
    assert authenticated(auth, body, {"x-tideflow-signature": good}, secrets)
    assert not authenticated(auth, body + b" ", {"x-tideflow-signature": good}, secrets)
    assert authenticated(auth, body, {"authorization": "Bearer k1"}, secrets)
    assert not authenticated(auth, body, {"authorization": "Bearer k2"}, secrets)
    assert not authenticated(None, body, {"authorization": "Bearer k1"}, secrets)
