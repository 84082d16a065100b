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

    An outage is what :func:`errors.is_database_outage` says it is: connection
    refused or lost, server shutting down, a lock or serialisation failure, a
    PostgreSQL session ended for holding its transaction too long. All are
    worth a retry. Other database errors (``IntegrityError``,
    ``ProgrammingError``) are bugs and stay 500s, as is a missing table:
    a database that ``migrate`` has not reached is no outage to retry.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if errors.is_database_outage(exception):
            return errors.error_response(request, SERVICE_UNAVAILABLE)
        return None
