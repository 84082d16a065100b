"""The one error envelope, and request ids.

Every error this app answers with has the same shape::

    {"error": {"type": "...", "message": "...", "request_id": "req_..."}}

and the request id also goes out in the ``Request-Id`` response header, so
support can find the request from either.

Every error also says whether sending the same request again, with the same
key, can succeed: ``X-Should-Retry: true`` or ``false`` (the header that
Stainless-generated SDKs read; ``IDEMPOTENCY_SHOULD_RETRY_HEADERS`` adds others,
such as Stripe's ``Stripe-Should-Retry``), and ``Retry-After`` when it can.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpResponse

from .conf import conf

REQUEST_ID_HEADER = "Request-Id"
_REQUEST_ID_ATTR = "_idempotency_request_id"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# RFC 4648's base32 alphabet, letter for letter into Crockford's.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())


def new_ulid() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, in Crockford base32.

    Encoded by base64.b32encode, 40 bits a step, not 5: 160 bits are exactly
    32 base32 digits with no padding, so the last 26 of the 20-byte big-endian
    value are the ULID's 130 bits (its first digit carries the top 3)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return base64.b32encode(value.to_bytes(20, "big"))[6:].translate(_TO_CROCKFORD).decode()


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
    """One kind of error: its HTTP status, its ``type`` and its message.

    ``retryable`` says whether the same request, with the same key, can succeed
    if sent again later (the answer goes out in the retry-hint headers).
    """

    status: int
    type: str
    message: str
    retryable: bool = False


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
BODY_MALFORMED = ErrorType(
    400, "request_body_invalid", "The request body cannot be read as its Content-Type says"
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
    retryable=True,
)
STORE_UNAVAILABLE = ErrorType(
    503,
    "idempotency_store_unavailable",
    "The idempotency store is unavailable; the request was not processed",
    retryable=True,
)
# A configuration error of the server (the app not installed, its table not
# migrated, a store behind the wrong client): sending the request
# again changes nothing until someone fixes the server, so it says "do not
# retry", and a 500 rather than a 503 (which announces a temporary state).
MISCONFIGURED = ErrorType(
    500,
    "idempotency_misconfigured",
    "Idempotency-Key support is misconfigured on this server; the request was not processed",
)

# A stored response sealed with a key this server no longer has, or altered:
# replaying it is impossible and running the view again would do it twice.
RECORD_UNREADABLE = ErrorType(
    500,
    "idempotency_record_unreadable",
    "The stored response for this idempotency key cannot be read on this server; "
    "the request was not processed again",
)


# How each backend says "no such table": PostgreSQL's SQLSTATE undefined_table,
# MySQL's and MariaDB's ER_NO_SUCH_TABLE, SQLite's words (it has no codes).
_PG_UNDEFINED_TABLE = "42P01"
_MYSQL_NO_SUCH_TABLE = 1146


def table_missing(exception: BaseException | None) -> bool:
    """Whether a database error says a table does not exist: a database that
    ``migrate`` has not reached, a configuration error rather than an outage."""
    if not isinstance(exception, DatabaseError):
        return False
    cause = exception.__cause__
    if (getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)) == _PG_UNDEFINED_TABLE:
        return True
    if exception.args and exception.args[0] == _MYSQL_NO_SUCH_TABLE:
        return True
    return isinstance(exception, OperationalError) and str(exception).startswith("no such table")


# PostgreSQL ends a session whose transaction outlived its timeout
# (idle_in_transaction_session_timeout: 25P03; transaction_timeout, PostgreSQL 17:
# 25P04), and drivers report that as an InternalError.
_SESSION_TIMEOUTS = frozenset({"25P03", "25P04"})


def is_database_outage(exception: BaseException) -> bool:
    """Whether ``exception`` is a database outage, worth a retry: an
    ``OperationalError`` or ``InterfaceError`` (connection refused or lost,
    server shutting down, a lock or serialisation failure), or the
    ``InternalError`` of a PostgreSQL session ended for holding its transaction
    too long. Other database errors (``IntegrityError``, ``ProgrammingError``)
    are bugs, and so is a missing table (:func:`table_missing`): a database
    that ``migrate`` has not reached is no outage to retry."""
    if table_missing(exception):
        return False
    if isinstance(exception, (OperationalError, InterfaceError)):
        return True
    if not isinstance(exception, DatabaseError):
        return False
    cause = exception.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return code in _SESSION_TIMEOUTS


def envelope(request: Any, type: str, message: str, **extra: Any) -> dict[str, Any]:
    """The envelope's body: ``{"error": {"type", "message", "request_id", **extra}}``."""
    return {
        "error": {"type": type, "message": message, "request_id": get_request_id(request), **extra}
    }


def should_retry(status: int) -> bool:
    """Whether an error of this status is worth sending again unchanged, for an
    error that does not say so itself: a timeout, a rate limit, a server error."""
    return status in (408, 429) or status >= 500


def retry_headers(retryable: bool) -> dict[str, str]:
    """The retry hints: each of ``IDEMPOTENCY_SHOULD_RETRY_HEADERS`` set to
    ``true`` or ``false``, and ``Retry-After`` (``IDEMPOTENCY_RETRY_AFTER``
    seconds) when a retry can succeed."""
    value = "true" if retryable else "false"
    headers = {name: value for name in conf.IDEMPOTENCY_SHOULD_RETRY_HEADERS}
    if retryable:
        headers["Retry-After"] = str(conf.IDEMPOTENCY_RETRY_AFTER)
    return headers


def error_response(
    request: Any, error: ErrorType, *, headers: dict[str, str] | None = None
) -> HttpResponse:
    """Render ``error`` in the envelope, with the request id in body and header,
    and the retry hints."""
    request_id = get_request_id(request)
    body = envelope(request, error.type, error.message)
    response = HttpResponse(
        json.dumps(body, separators=(",", ":")).encode(),
        status=error.status,
        content_type="application/json",
    )
    response[REQUEST_ID_HEADER] = request_id
    for name, value in {**retry_headers(error.retryable), **(headers or {})}.items():
        response[name] = value
    return response


__all__ = [
    "BODY_INVALID",
    "BODY_MALFORMED",
    "CONFLICT",
    "IN_USE",
    "KEY_INVALID",
    "KEY_MISSING",
    "MISCONFIGURED",
    "PATH_INVALID",
    "RECORD_UNREADABLE",
    "REQUEST_ID_HEADER",
    "REQUEST_TOO_LARGE",
    "SCOPE_UNAVAILABLE",
    "STORE_UNAVAILABLE",
    "ErrorType",
    "envelope",
    "error_response",
    "get_request_id",
    "is_database_outage",
    "new_ulid",
    "retry_headers",
    "should_retry",
    "table_missing",
]
