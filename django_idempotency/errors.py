"""The one error envelope, and request ids.

Every error this app answers with has the same shape::

    {"error": {"type": "...", "message": "...", "request_id": "req_..."}}

and the request id also goes out in the ``Request-Id`` response header, so
support can find the request from either.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from django.http import HttpResponse

REQUEST_ID_HEADER = "Request-Id"
_REQUEST_ID_ATTR = "_idempotency_request_id"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, in Crockford base32."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def get_request_id(request: Any) -> str:
    """The request's id (``req_`` plus a ULID), made on first use and then kept.

    Accepts a Django ``HttpRequest`` or a DRF ``Request``; both give the same id.
    """
    http_request = getattr(request, "_request", request)
    request_id: str | None = getattr(http_request, _REQUEST_ID_ATTR, None)
    if request_id is None:
        request_id = "req_" + new_ulid()
        setattr(http_request, _REQUEST_ID_ATTR, request_id)
    return request_id


@dataclass(frozen=True)
class ErrorType:
    """One kind of error: its HTTP status, its ``type`` and its message."""

    status: int
    type: str
    message: str


KEY_MISSING = ErrorType(
    400, "idempotency_key_missing", "This endpoint requires an Idempotency-Key header"
)
KEY_INVALID = ErrorType(
    400,
    "idempotency_key_invalid",
    "The Idempotency-Key header must be one value of 1 to 255 printable ASCII characters",
)
SCOPE_UNAVAILABLE = ErrorType(
    403,
    "idempotency_scope_unavailable",
    "Idempotency keys can only be used by an authenticated caller",
)
BODY_INVALID = ErrorType(
    400, "request_body_invalid", "The request body is JSON nested too deeply to be read"
)
PATH_INVALID = ErrorType(
    400,
    "request_path_invalid",
    "The request path contains characters that this server does not accept",
)
REQUEST_TOO_LARGE = ErrorType(
    413, "request_too_large", "The request body is larger than this server accepts"
)
CONFLICT = ErrorType(
    409,
    "idempotency_conflict",
    "A different request was already made with this idempotency key",
)
IN_USE = ErrorType(
    409,
    "idempotency_key_in_use",
    "A request with this idempotency key is still being processed; retry later",
)
STORE_UNAVAILABLE = ErrorType(
    503,
    "idempotency_store_unavailable",
    "The idempotency store is unavailable; the request was not processed",
)


def error_response(
    request: Any, error: ErrorType, *, headers: dict[str, str] | None = None
) -> HttpResponse:
    """Render ``error`` in the envelope, with the request id in body and header."""
    request_id = get_request_id(request)
    body = {"error": {"type": error.type, "message": error.message, "request_id": request_id}}
    response = HttpResponse(
        json.dumps(body, separators=(",", ":")).encode(),
        status=error.status,
        content_type="application/json",
    )
    response[REQUEST_ID_HEADER] = request_id
    for name, value in (headers or {}).items():
        response[name] = value
    return response


__all__ = [
    "BODY_INVALID",
    "CONFLICT",
    "IN_USE",
    "KEY_INVALID",
    "KEY_MISSING",
    "PATH_INVALID",
    "REQUEST_ID_HEADER",
    "REQUEST_TOO_LARGE",
    "SCOPE_UNAVAILABLE",
    "STORE_UNAVAILABLE",
    "ErrorType",
    "error_response",
    "get_request_id",
    "new_ulid",
]
