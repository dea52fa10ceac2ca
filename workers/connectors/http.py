"""`http@1`: one HTTP request. 5xx, timeouts and connection errors fail retryable (and count
against the host's circuit breaker); 4xx fails non-retryable with the response recorded."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from tideflow.errors import ApplicationError
from workers.connectors.breakers import BreakerFailure, Breakers
from workers.connectors.secrets import Secrets

MAX_BODY_CHARS = 64 * 1024
"""A response body is kept up to this many characters (in results and failure details)."""
DEFAULT_TIMEOUT_S = 10.0
SAFE_HEADERS = ("content-type", "content-length", "etag", "last-modified", "location")
"""Response headers a result carries; the rest (cookies, auth challenges) stay out of history."""


def render_url(template: str, params: dict[str, Any]) -> str:
    """The URL with each `{name}` replaced by params[name], URL-encoded."""
    try:
        return template.format_map({k: quote(str(v), safe="") for k, v in params.items()})
    except (KeyError, ValueError, IndexError) as e:
        raise ApplicationError(
            f"url template {template!r}: {e!r} is not in params",
            type="BadInput",
            non_retryable=True,
        ) from None


def _body(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text[:MAX_BODY_CHARS]


def _response(response: httpx.Response, secrets: Secrets, references: list[str]) -> dict[str, Any]:
    body = _body(response)
    if isinstance(body, str):
        body = secrets.redact(body, references)
    return {
        "status": response.status_code,
        "headers": {k: v for k, v in response.headers.items() if k.lower() in SAFE_HEADERS},
        "body": body,
    }


class HttpBlock:
    def __init__(self, client: httpx.AsyncClient, breakers: Breakers, secrets: Secrets) -> None:
        self._client = client
        self._breakers = breakers
        self._secrets = secrets

    async def __call__(self, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise ApplicationError("input.url is required", type="BadInput", non_retryable=True)
        method = str(value.get("method", "GET")).upper()
        url = render_url(value["url"], dict(value.get("params") or {}))
        headers = {str(k): str(v) for k, v in (value.get("headers") or {}).items()}
        query = {str(k): str(v) for k, v in (value.get("query") or {}).items()}
        references = [*headers.values(), *query.values()]
        request = self._client.build_request(
            method,
            url,
            headers={k: self._secrets.resolve(v) for k, v in headers.items()},
            params={k: self._secrets.resolve(v) for k, v in query.items()},
            content=(
                json.dumps(value["body"]).encode()
                if "body" in value
                else str(value.get("body_text", "")).encode() or None
            ),
            timeout=float(value.get("timeout_s", DEFAULT_TIMEOUT_S)),
        )
        if "body" in value:
            request.headers.setdefault("content-type", "application/json")
        split = urlsplit(url)
        host = f"{split.hostname}:{split.port or (443 if split.scheme == 'https' else 80)}"
        try:
            async with self._breakers.guard(host):
                try:
                    response = await self._client.send(request)
                except httpx.TimeoutException as e:
                    raise BreakerFailure(
                        ApplicationError(f"{method} {url} timed out: {e!r}", type="HttpTimeout")
                    ) from e
                except httpx.TransportError as e:
                    raise BreakerFailure(
                        ApplicationError(f"{method} {url}: {e!r}", type="HttpConnectionError")
                    ) from e
                if response.status_code >= 500:
                    raise BreakerFailure(
                        ApplicationError(
                            f"{method} {url} answered {response.status_code}",
                            _response(response, self._secrets, references),
                            type="HttpServerError",
                        )
                    )
        except BreakerFailure as failure:
            raise failure.args[0] from None
        result = _response(response, self._secrets, references)
        if response.status_code >= 400:
            raise ApplicationError(
                f"{method} {url} answered {response.status_code}",
                result,
                type="HttpClientError",
                non_retryable=True,
            )
        return result
