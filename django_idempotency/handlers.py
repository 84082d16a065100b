"""Django's own error views in the package's envelope.

For answers that no view gives (unrouted URLs, crashes, a body over
``DATA_UPLOAD_MAX_MEMORY_SIZE`` on an endpoint that ``@idempotent`` does not
guard), in a project's root URLconf::

    handler400 = "django_idempotency.handlers.handler400"
    handler404 = "django_idempotency.handlers.handler404"
    handler500 = "django_idempotency.handlers.handler500"
"""

from __future__ import annotations

import sys

from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from .errors import REQUEST_TOO_LARGE, ErrorType, error_response, table_missing

BAD_REQUEST = ErrorType(400, "invalid_request", "The request is malformed")
NOT_FOUND = ErrorType(404, "not_found", "No such resource")
SERVER_ERROR = ErrorType(500, "api_error", "Something went wrong on our side", retryable=True)
MISCONFIGURED_SERVER = ErrorType(500, "api_error", "Something went wrong on our side")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's bad requests (its ``SuspiciousOperation``\\s) in the envelope."""
    if isinstance(exception, RequestDataTooBig):
        return error_response(request, REQUEST_TOO_LARGE)
    return error_response(request, BAD_REQUEST)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Unrouted URLs and ``Http404`` in the envelope."""
    return error_response(request, NOT_FOUND)


def handler500(request: HttpRequest) -> HttpResponse:
    """Crashes in the envelope. A 500 is worth a retry: the view's work, if the
    database store guarded it, was rolled back with the claim. Not one of
    ``ImproperlyConfigured`` or of a missing table: no retry succeeds until the
    server is fixed."""
    # Django calls this inside its ``except`` block: the exception is current.
    exception = sys.exc_info()[1]
    if isinstance(exception, ImproperlyConfigured) or table_missing(exception):
        return error_response(request, MISCONFIGURED_SERVER)
    return error_response(request, SERVER_ERROR)
