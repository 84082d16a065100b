"""JSON errors whatever ``DEBUG`` says.

With ``DEBUG`` on, Django answers an unrouted URL and an exception that escapes
a view (a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` on PATCH, which DRF reads
outside its exception handling) with its HTML debug pages, and ignores
``handler404``/``handler400``. An API's clients must get the error envelope
either way, so this middleware asks the root URLconf's handlers for those
answers in debug mode too. With ``DEBUG`` off Django already does; the
middleware then changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import get_resolver


def _handler(status: int) -> Callable[..., HttpResponse]:
    handler: Callable[..., HttpResponse] = get_resolver().resolve_error_handler(status)
    return handler


class JsonErrorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            settings.DEBUG
            and response.status_code == 404
            and getattr(request, "resolver_match", None) is None
            and "json" not in response.get("Content-Type", "")
        ):
            # No URL pattern matched: Django's debug 404 page.
            return _handler(404)(request, Http404())
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not settings.DEBUG:
            return None  # Django calls the same handlers (and logs to django.security)
        if isinstance(exception, SuspiciousOperation):  # RequestDataTooBig among them
            return _handler(400)(request, exception)
        if isinstance(exception, Http404):
            return _handler(404)(request, exception)
        return None
