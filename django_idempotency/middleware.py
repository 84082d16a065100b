"""A 503 in the error envelope, not a 500 traceback, when the database is down.

``@idempotent`` answers ``503 idempotency_store_unavailable`` itself when its
store fails. But a request meets the database before it reaches the decorator:
DRF authenticates the caller (API keys, sessions, users are rows), and that
query raises ``OperationalError`` when the server is down or restarting, which
Django turns into a 500 with a logged traceback. This middleware answers such
requests as what they are, a temporary outage the client should retry::

    MIDDLEWARE = [
        ...,
        "django_idempotency.middleware.DatabaseUnavailableMiddleware",
    ]

Nothing was committed by a request that fails this way under the database store
(its transaction rolled back), and a retry with the same ``Idempotency-Key`` is
safe on every store. Django opens a new connection for the next request, so
service resumes by itself when the database is back.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from . import errors

# Defined here, not in errors.py: the decorator never answers it (errors.py holds
# the decorator's own errors, which the OpenAPI extension documents).
SERVICE_UNAVAILABLE = errors.ErrorType(
    503,
    "service_unavailable",
    "The database is unavailable; retry the request later",
    retryable=True,
)


class DatabaseUnavailableMiddleware:
    """Answer a view's database outage with ``503 service_unavailable``.

    An outage is an ``OperationalError`` or ``InterfaceError`` (connection refused
    or lost, server shutting down, a lock or serialisation failure), or the
    ``InternalError`` of a PostgreSQL session ended for holding its transaction
    too long. All are worth a retry. Other database errors (``IntegrityError``,
    ``ProgrammingError``) are bugs and stay 500s, as is SQLite's "no such
    table" (an ``OperationalError`` there, a ``ProgrammingError`` elsewhere):
    a database that ``migrate`` has not reached is no outage to retry.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if errors.table_missing(exception):
            return None
        if isinstance(exception, (OperationalError, InterfaceError)) or (
            isinstance(exception, DatabaseError) and _session_ended(exception)
        ):
            return errors.error_response(request, SERVICE_UNAVAILABLE)
        return None


# PostgreSQL ends a session whose transaction outlived its timeout
# (idle_in_transaction_session_timeout: 25P03; transaction_timeout, PostgreSQL 17:
# 25P04), and drivers report that as an InternalError.
_SESSION_TIMEOUTS = frozenset({"25P03", "25P04"})


def _session_ended(exception: DatabaseError) -> bool:
    cause = exception.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return code in _SESSION_TIMEOUTS
