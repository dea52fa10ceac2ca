"""Turning messages into rich tables for people and into JSON for scripts."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.markup import escape

from tideflow.api.v1 import common_pb2, history_pb2

STATUS_STYLE = {
    "RUNNING": "cyan",
    "COMPLETED": "green",
    "FAILED": "red",
    "CANCELED": "yellow",
    "TERMINATED": "magenta",
    "TIMED_OUT": "red",
}


def _payload_value(payload: dict[str, Any]) -> Any:
    metadata = payload.get("metadata", {})
    encoding = base64.b64decode(metadata.get("encoding", "")).decode(errors="replace")
    data = base64.b64decode(payload.get("data", ""))
    if encoding == "binary/null":
        return None
    if encoding in ("json/plain", "") and data:
        try:
            return json.loads(data)
        except ValueError:
            pass
    if not data:
        return None
    return {"encoding": encoding, "data": payload.get("data", "")}


def _is_payloads(value: dict[str, Any]) -> bool:
    items = value.get("payloads")
    return (
        set(value) == {"payloads"}
        and isinstance(items, list)
        and all(isinstance(p, dict) and set(p) <= {"metadata", "data"} for p in items)
    )


def decode_payloads(value: Any) -> Any:
    """`value` (a MessageToDict result) with every Payloads replaced by its first value."""
    if isinstance(value, dict):
        if _is_payloads(value):
            items = value["payloads"]
            return _payload_value(items[0]) if items else None
        return {k: decode_payloads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_payloads(v) for v in value]
    return value


def to_dict(message: Message) -> dict[str, Any]:
    """A message as plain JSON data, payloads decoded."""
    raw = json_format.MessageToDict(message, preserving_proto_field_name=True)
    decoded: dict[str, Any] = decode_payloads(raw)
    return decoded


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def compact(value: Any, width: int = 100) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def timestamp(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def run_status(value: int) -> str:
    return common_pb2.RunStatus.Name(value).removeprefix("RUN_STATUS_")  # type: ignore[arg-type]


def attempts(attempt: int, maximum: int) -> str:
    """`2/10`, or `2/unlimited` for a maximum below 1 (-1, or 0 from an older server)."""
    return f"{attempt}/{maximum if maximum > 0 else 'unlimited'}"


def styled_status(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def event_type(event: history_pb2.HistoryEvent) -> str:
    return history_pb2.EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def event_details(event: history_pb2.HistoryEvent) -> str:
    """The event's attributes in one short line."""
    kind = event.WhichOneof("attributes")
    if kind is None:
        return ""
    attributes: Message = getattr(event, kind)
    return compact(to_dict(attributes))


def event_row(event: history_pb2.HistoryEvent) -> tuple[str, str, str, str]:
    kind = event_type(event)
    style = "green" if kind.endswith("COMPLETED") else ""
    if kind.endswith(("FAILED", "TIMED_OUT", "TERMINATED")):
        style = "red"
    shown = f"[{style}]{kind}[/]" if style else kind
    return str(event.event_id), timestamp(event.event_time), shown, escape(event_details(event))
