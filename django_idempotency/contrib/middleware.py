"""``503 service_unavailable`` in the envelope, not a 500, when the database is down.

A request meets the database before ``@idempotent`` (DRF authenticates the
caller), and an outage there would be a 500; docs/operating.rst has the details.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBase

from ..errors import ErrorType, error_response, is_database_outage

SERVICE_UNAVAILABLE = ErrorType(
    503,
    "service_unavailable",
    "The database is unavailable; retry the request later",
    retryable=True,
)


class DatabaseUnavailableMiddleware:
    """Answer a view's database outage (:func:`~django_idempotency.errors.is_database_outage`)
    with ``503 service_unavailable``; other database errors stay 500s."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_database_outage(exception):
            return error_response(request, SERVICE_UNAVAILABLE)
        return None
