"""The value of a record's Redis key: one line of JSON (the state, the request
it is about, and per state the owner token, the first attempt's start or the
response's status and headers), then the response body's bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..base import RequestRecord, StoredResponse

IN_FLIGHT = "in_flight"
COMPLETED = "completed"
#: A released attempt, kept until its TTL ends so that the next attempt of the
#: same request gets the same ``request.idempotency_key``.
RELEASED = "released"


@dataclass(frozen=True)
class RedisRecord:
    """One record as the Redis store keeps it (see :meth:`RedisStore.lookup`)."""

    scope: str
    key: str
    fingerprint: str
    method: str
    path: str
    state: str
    response: StoredResponse | None
    #: When the first attempt claimed the key (in-flight and released records),
    #: as :func:`~django_idempotency.keys.instant` wrote it: naive, UTC if aware.
    first_claimed_at: datetime | None = None


# One encoder for every value: json.dumps builds one per call when given separators.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def encode(state: str, record: RequestRecord, body: bytes = b"", **more: Any) -> bytes:
    """The value of ``record`` in ``state``; ``state`` comes first, which the claim script reads."""
    head = {
        "state": state,
        "scope": record.scope,
        "key": record.key,
        "fingerprint": record.fingerprint,
        "method": record.method,
        "path": record.path,
        **more,
    }
    # JSON escapes newlines inside strings, so the first b"\n" ends the head.
    return _encode_json(head).encode() + b"\n" + body


def decode(value: bytes) -> RedisRecord:
    """Read a value written by :func:`encode`."""
    head, _, body = value.partition(b"\n")
    meta = json.loads(head)
    response = None
    if meta["state"] == COMPLETED:
        response = StoredResponse(meta["status"], [(n, v) for n, v in meta["headers"]], body)
    first = meta.get("first")
    return RedisRecord(
        scope=meta["scope"],
        key=meta["key"],
        fingerprint=meta["fingerprint"],
        method=meta["method"],
        path=meta["path"],
        state=meta["state"],
        response=response,
        first_claimed_at=datetime.fromisoformat(first) if first else None,
    )
