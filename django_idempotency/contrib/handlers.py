"""Django's own error views (``handler400``, ``handler404``, ``handler500``) in the envelope.

For the answers that no view gives; docs/errors.rst, "Plain Django views".
"""

from __future__ import annotations

import sys

from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from ..errors import REQUEST_TOO_LARGE, ErrorType, error_response, table_missing

BAD_REQUEST = ErrorType(400, "invalid_request", "The request is malformed")
NOT_FOUND = ErrorType(404, "not_found", "No such resource")
SERVER_ERROR = ErrorType(500, "api_error", "Something went wrong on our side", retryable=True)
MISCONFIGURED_SERVER = ErrorType(500, "api_error", "Something went wrong on our side")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if isinstance(exception, RequestDataTooBig):
        return error_response(request, REQUEST_TOO_LARGE)
    return error_response(request, BAD_REQUEST)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(request, NOT_FOUND)


def handler500(request: HttpRequest) -> HttpResponse:
    # A crash is worth a retry (the database store rolled the view's work back
    # with the claim); a configuration error or a missing table is not.
    exception = sys.exc_info()[1]  # Django calls this inside its except block
    if isinstance(exception, ImproperlyConfigured) or table_missing(exception):
        return error_response(request, MISCONFIGURED_SERVER)
    return error_response(request, SERVER_ERROR)
