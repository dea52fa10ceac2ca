"""API keys: made at random, shown once, kept as a hash, looked up by their public id.

A key reads `tfk.<key_id>.<secret>`: 64 random bits of id (public: lists and audit records
name it) and 256 random bits of secret. The store keeps the id, the key's namespace and role,
and SHA-256 of the secret; a presented key is found by its id and accepted when the hash of
its secret matches (compared in constant time) and it is not revoked. Keys are random, not
chosen by people, so a plain hash is as strong as the secret is long: no salt or stretching.

A frontend keeps what it looked up for `key_cache_s`, so a key costs one read per frontend
per period; a revocation reaches the other frontends within that period, and the revoking
frontend at once.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Final

from tideflow.api.v1 import operator_service_pb2
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.interfaces import MetadataStore
from tideflow_server.persistence.records import ApiKeyRow
from tideflow_server.rpc.errors import NotFound, Unauthenticated

CLUSTER: Final = "*"
"""The namespace of a cluster key: it acts on the cluster and every namespace."""
PREFIX: Final = "tfk"
_KEY = re.compile(r"^tfk\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
MAX_KEYS_LISTED: Final = 1_000


class Role(enum.Enum):
    """What a key may do. admin > writer > reader; admin > worker."""

    ADMIN = operator_service_pb2.API_KEY_ROLE_ADMIN
    WRITER = operator_service_pb2.API_KEY_ROLE_WRITER
    READER = operator_service_pb2.API_KEY_ROLE_READER
    WORKER = operator_service_pb2.API_KEY_ROLE_WORKER

    def grants(self, needed: Role) -> bool:
        """Whether a key of this role may do what `needed` may."""
        return needed in _GRANTS[self]

    @property
    def label(self) -> str:
        return self.name.lower()


_GRANTS: Final[dict[Role, frozenset[Role]]] = {
    Role.ADMIN: frozenset(Role),
    Role.WRITER: frozenset({Role.WRITER, Role.READER}),
    Role.READER: frozenset({Role.READER}),
    Role.WORKER: frozenset({Role.WORKER}),
}


@dataclass(frozen=True)
class Principal:
    """Who a call runs as."""

    key_id: str
    namespace: str
    role: Role
    task_queues: frozenset[str] = frozenset()
    """A worker key's queues; empty: all of its namespace's."""

    def acts_on(self, namespace: str) -> bool:
        return self.namespace in (CLUSTER, namespace)

    @property
    def name(self) -> str:
        """How audit records name the caller."""
        return f"key:{self.key_id}" if self.key_id else "anonymous"


ANONYMOUS: Final = Principal(key_id="", namespace=CLUSTER, role=Role.ADMIN)
"""Every call's principal when auth is off (start-dev)."""


def parse_bearer(value: str | None) -> tuple[str, str]:
    """(key id, secret) of an `authorization: Bearer <key>` value; UNAUTHENTICATED when
    there is none or it is not a key's shape."""
    if not value:
        raise Unauthenticated(
            "this call needs an API key: send `authorization: Bearer <key>`",
            reason="API_KEY_MISSING",
        )
    scheme, _, key = value.strip().partition(" ")
    match = _KEY.match(key.strip()) if scheme.lower() == "bearer" else None
    if match is None:
        raise Unauthenticated(
            "the authorization metadata is not `Bearer <key>` with a Tideflow API key",
            reason="API_KEY_MALFORMED",
        )
    return match.group(1), match.group(2)


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _invalid() -> Unauthenticated:
    # One answer for an unknown key, a wrong secret and a revoked key: a caller learns nothing
    # about which key ids exist.
    return Unauthenticated(
        "the API key is not valid (unknown or revoked)", reason="API_KEY_INVALID"
    )


@dataclass
class _Cached:
    expires: float
    record: records_pb2.ApiKeyRecord | None


@dataclass
class ApiKeys:
    metadata: MetadataStore
    cache_s: float = 5.0
    _cache: dict[str, _Cached] = field(default_factory=dict)

    async def create(
        self,
        *,
        namespace: str,
        role: Role,
        task_queues: list[str] | None = None,
        description: str = "",
        created_by: str = "",
    ) -> tuple[operator_service_pb2.ApiKeyInfo, str]:
        """A new key and its info; the key is in no store, only its hash."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        record = records_pb2.ApiKeyRecord(secret_sha256=_sha256(secret))
        info = record.info
        info.key_id = key_id
        info.namespace = namespace
        info.role = role.value
        info.task_queues.extend(task_queues or ())
        info.description = description
        info.created_by = created_by
        info.create_time.GetCurrentTime()
        await self.metadata.create_api_key(
            ApiKeyRow(key_id=key_id, namespace=namespace, data=record.SerializeToString())
        )
        return info, f"{PREFIX}.{key_id}.{secret}"

    async def _record(self, key_id: str) -> records_pb2.ApiKeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires > now:
            return cached.record
        try:
            row = await self.metadata.get_api_key(key_id)
            record: records_pb2.ApiKeyRecord | None = records_pb2.ApiKeyRecord.FromString(row.data)
        except store.NotFound:
            record = None
        if len(self._cache) > 10_000:
            self._cache.clear()  # unknown ids from a scan cannot grow it without bound
        self._cache[key_id] = _Cached(now + self.cache_s, record)
        return record

    async def authenticate(self, authorization: str | None) -> Principal:
        key_id, secret = parse_bearer(authorization)
        record = await self._record(key_id)
        if (
            record is None
            or record.info.HasField("revoke_time")
            or not hmac.compare_digest(record.secret_sha256, _sha256(secret))
        ):
            raise _invalid()
        info = record.info
        return Principal(
            key_id=key_id,
            namespace=info.namespace,
            role=Role(info.role),
            task_queues=frozenset(info.task_queues),
        )

    async def list(self, namespace: str) -> list[operator_service_pb2.ApiKeyInfo]:
        rows = await self.metadata.list_api_keys(namespace, limit=MAX_KEYS_LISTED)
        infos = [records_pb2.ApiKeyRecord.FromString(r.data).info for r in rows]
        return sorted(infos, key=lambda i: (i.create_time.ToNanoseconds(), i.key_id))

    async def revoke(self, namespace: str, key_id: str) -> operator_service_pb2.ApiKeyInfo:
        """NOT_FOUND unless the key exists and is of `namespace`."""
        try:
            row = await self.metadata.get_api_key(key_id)
        except store.NotFound:
            row = None
        if row is None or row.namespace != namespace:
            raise NotFound(
                f"namespace {namespace!r} has no API key {key_id!r}", reason="API_KEY_NOT_FOUND"
            )
        record = records_pb2.ApiKeyRecord.FromString(row.data)
        if not record.info.HasField("revoke_time"):
            record.info.revoke_time.GetCurrentTime()
            await self.metadata.update_api_key(
                ApiKeyRow(key_id=key_id, namespace=namespace, data=record.SerializeToString())
            )
        self._cache.pop(key_id, None)
        return record.info
