"""Every error the package answers, on one path, as DRF does with ``Throttled``.

Code raises :class:`IdempotencyError` with an :class:`ErrorType`; :func:`respond`
answers it (through the view's ``EXCEPTION_HANDLER`` in DRF); :func:`stamp` adds
the ``Request-Id`` header and the retry hints. docs/errors.rst is the catalogue.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from rest_framework import exceptions as drf_exceptions
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response

from .conf import conf

REQUEST_ID_HEADER = "Request-Id"
_REQUEST_ID_ATTR = "_idempotency_request_id"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# RFC 4648's base32 alphabet, letter for letter into Crockford's.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())


def new_ulid() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, in Crockford base32."""
    # 160 bits are 32 base32 digits with no padding: the last 26 are the ULID.
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return base64.b32encode(value.to_bytes(20, "big"))[6:].translate(_TO_CROCKFORD).decode()


def get_request_id(request: Any) -> str:
    """The request's id, ``req_`` and a ULID, the same for its DRF ``Request``."""
    http_request = getattr(request, "_request", request)
    request_id: str | None = getattr(http_request, _REQUEST_ID_ATTR, None)
    if request_id is None:
        request_id = "req_" + new_ulid()
        setattr(http_request, _REQUEST_ID_ATTR, request_id)
    return request_id


@dataclass(frozen=True)
class ErrorType:
    """One kind of error. ``retryable``: the same request, same key, can succeed later."""

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
    409, "idempotency_conflict", "A different request was already made with this idempotency key"
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
# The server's configuration, not a temporary state: a 500 that says "do not retry".
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

#: The errors of ``@idempotent``'s API contract, as the OpenAPI schema lists
#: them. Not MISCONFIGURED: a broken server is no part of an API, as a crash is not.
API_ERRORS = (
    KEY_MISSING,
    KEY_INVALID,
    SCOPE_UNAVAILABLE,
    BODY_INVALID,
    BODY_MALFORMED,
    PATH_INVALID,
    REQUEST_TOO_LARGE,
    CONFLICT,
    IN_USE,
    STORE_UNAVAILABLE,
)


def store_failure(exc: BaseException) -> ErrorType:
    """The answer to a store's failure: an outage says "retry", a StoreMisconfigured
    "do not"; a view's database outage (no ``retryable``) is always worth a retry."""
    return STORE_UNAVAILABLE if getattr(exc, "retryable", True) else MISCONFIGURED


class IdempotencyError(APIException):
    """One of the package's errors, raised so that DRF renders it; ``error`` says which."""

    def __init__(self, error: ErrorType) -> None:
        super().__init__(error.message, error.type)
        self.error = error
        self.status_code = error.status
        self.default_code = error.type
        # As DRF's Throttled: DRF's handler sends ``wait`` as Retry-After.
        self.wait: int | None = conf.IDEMPOTENCY_RETRY_AFTER if error.retryable else None

    @property
    def retryable(self) -> bool:
        return self.error.retryable


def is_drf_request(value: Any) -> bool:
    return hasattr(value, "_request") and isinstance(value._request, HttpRequest)


def drf_view(request: Any) -> Any:
    """The DRF view handling ``request``, or None outside DRF."""
    if not is_drf_request(request):
        return None
    return (getattr(request, "parser_context", None) or {}).get("view")


def respond(request: Any, exc: BaseException) -> HttpResponseBase | None:
    """The answer to ``exc``, raised in a guarded request; None if Django must handle it.

    In a DRF view, the view's ``handle_exception()`` and so the project's
    ``EXCEPTION_HANDLER``; for the package's errors, :func:`exception_handler`
    where that is DRF's default, whose ``{"detail"}`` cannot tell a conflict
    from a key in use. Elsewhere the package's errors get the envelope.
    """
    view = drf_view(request)
    retryable = exc.retryable if isinstance(exc, IdempotencyError) else None
    if view is not None and isinstance(exc, Exception):
        response: HttpResponseBase = _handled(view, exc)
    elif isinstance(exc, IdempotencyError):
        response = error_response(request, exc.error)
    else:
        return None
    return stamp(response, request, retryable)


def _handled(view: Any, exc: Exception) -> HttpResponseBase:
    from rest_framework.views import exception_handler as drf_exception_handler

    if not isinstance(exc, IdempotencyError) or (
        view.get_exception_handler() is not drf_exception_handler
    ):
        return view.handle_exception(exc)  # type: ignore[no-any-return]
    # Shadowed on this instance for this one call: the view's own
    # handle_exception() (an override that logs, say) still runs.
    view.get_exception_handler = lambda: exception_handler
    try:
        return view.handle_exception(exc)  # type: ignore[no-any-return]
    finally:
        del view.get_exception_handler


def stamp(
    response: HttpResponseBase, request: Any, retryable: bool | None = None
) -> HttpResponseBase:
    """Add the ``Request-Id`` header, and the retry hints when ``retryable`` is
    known; a ``Retry-After`` already there (DRF's ``wait``) stays."""
    if REQUEST_ID_HEADER not in response:
        response[REQUEST_ID_HEADER] = get_request_id(request)
    if retryable is not None:
        for name, value in retry_headers(retryable).items():
            if name != "Retry-After" or name not in response:
                response[name] = value
    return response


def retry_headers(retryable: bool) -> dict[str, str]:
    """Each of ``IDEMPOTENCY_SHOULD_RETRY_HEADERS`` set to ``true`` or ``false``,
    and ``Retry-After`` when a retry can succeed."""
    value = "true" if retryable else "false"
    headers = {name: value for name in conf.IDEMPOTENCY_SHOULD_RETRY_HEADERS}
    if retryable:
        headers["Retry-After"] = str(conf.IDEMPOTENCY_RETRY_AFTER)
    return headers


def should_retry(status: int) -> bool:
    """For an error that does not say: a timeout, a rate limit, a server error."""
    return status in (408, 429) or status >= 500


def envelope(request: Any, type: str, message: str, **extra: Any) -> dict[str, Any]:
    """The envelope's body: ``{"error": {"type", "message", "request_id", **extra}}``."""
    return {
        "error": {"type": type, "message": message, "request_id": get_request_id(request), **extra}
    }


def error_response(request: Any, error: ErrorType) -> HttpResponse:
    """``error`` in the envelope, with the request id and the retry hints."""
    body = envelope(request, error.type, error.message)
    response = HttpResponse(
        json.dumps(body, separators=(",", ":")).encode(),
        status=error.status,
        content_type="application/json",
    )
    stamp(response, request, error.retryable)
    return response


# DRF's own codes ("invalid", "not_authenticated"...) are DRF's words, not an
# API's: the envelope's "type" is then a word for the status.
_DRF_CODES = frozenset(
    cls.default_code
    for cls in vars(drf_exceptions).values()
    if isinstance(cls, type) and issubclass(cls, APIException)
)
_TYPES_BY_STATUS = {
    400: "invalid_request",
    401: "authentication_required",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's ``EXCEPTION_HANDLER``, with every API error in the package's envelope.

    DRF's own handling first (status, ``WWW-Authenticate``, ``Retry-After``,
    the rollback of ``ATOMIC_REQUESTS``); anything else is left to Django.
    """
    # Imported here: rest_framework.views imports the project's authentication
    # classes, and so its models, and this module is imported as apps load.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    request = context["request"]
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationError):
        message, fields = _validation_summary(response.data)
        if fields:
            extra["fields"] = fields
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else None
        message = str(detail or exc)
    response.data = envelope(request, error_type(exc, response.status_code), message, **extra)
    retryable = getattr(exc, "retryable", None)
    stamp(response, request, should_retry(response.status_code) if retryable is None else retryable)
    return response


def error_type(exc: Exception, status: int) -> str:
    """The envelope's ``type``: the exception's own code, else a word for the status."""
    code = getattr(exc, "default_code", None)
    if isinstance(code, str) and code not in _DRF_CODES:
        return code
    return _TYPES_BY_STATUS.get(status, "api_error")


def _validation_summary(data: Any) -> tuple[str, dict[str, Any] | None]:
    """A one-line message naming the first problem, and DRF's per-field messages."""
    if isinstance(data, dict) and data:
        name, messages = next(iter(data.items()))
        first = _first_message(messages)
        return (first if name == "non_field_errors" else f"{name}: {first}"), data
    return _first_message(data) or "The request is invalid", None


def _first_message(messages: Any) -> str:
    while isinstance(messages, (list, dict)) and messages:
        messages = next(iter(messages.values())) if isinstance(messages, dict) else messages[0]
    return str(messages) if messages else ""


# SQLSTATE undefined_table; MySQL's and MariaDB's ER_NO_SUCH_TABLE; SQLite has only words.
_PG_UNDEFINED_TABLE = "42P01"
_MYSQL_NO_SUCH_TABLE = 1146
# PostgreSQL ends a session whose transaction outlived idle_in_transaction_session_timeout
# (25P03) or transaction_timeout (25P04); drivers raise InternalError.
_SESSION_TIMEOUTS = frozenset({"25P03", "25P04"})


def table_missing(exception: BaseException | None) -> bool:
    """Whether a database error says a table does not exist: ``migrate`` has
    not run there, a configuration error rather than an outage."""
    if not isinstance(exception, DatabaseError):
        return False
    if _sqlstate(exception) == _PG_UNDEFINED_TABLE:
        return True
    if exception.args and exception.args[0] == _MYSQL_NO_SUCH_TABLE:
        return True
    return isinstance(exception, OperationalError) and str(exception).startswith("no such table")


def is_database_outage(exception: BaseException) -> bool:
    """Whether ``exception`` is a database outage, worth a retry (docs/errors.rst)."""
    if table_missing(exception):
        return False
    if isinstance(exception, (OperationalError, InterfaceError)):
        return True
    return isinstance(exception, DatabaseError) and _sqlstate(exception) in _SESSION_TIMEOUTS


def _sqlstate(exception: BaseException) -> str | None:
    cause = exception.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
