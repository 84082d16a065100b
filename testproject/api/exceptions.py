"""The demo's errors, in the same envelope as django_idempotency's own::

    {"error": {"type": "...", "message": "...", "request_id": "req_..."}}

with the request id also in the ``Request-Id`` header.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from django_idempotency.errors import (
    REQUEST_ID_HEADER,
    REQUEST_TOO_LARGE,
    ErrorType,
    get_request_id,
)
from django_idempotency.errors import error_response as _envelope_response

# DRF's own exceptions, by status, as the envelope's "type".
_TYPES = {
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


class ApiError(APIException):
    """An error of the demo's own, with its envelope type."""

    error_type = "api_error"


class InsufficientCredits(ApiError):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    error_type = "insufficient_credits"
    default_detail = "Not enough credits for this job; purchase credits and retry"


class JobNotOpen(ApiError):
    status_code = status.HTTP_409_CONFLICT
    error_type = "job_not_open"
    default_detail = "Only an open job can change its status"


def error_body(request: Any, error_type: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "error": {
            "type": error_type,
            "message": message,
            "request_id": get_request_id(request),
            **extra,
        }
    }


def error_response(request: Any, status_code: int, error_type: str, message: str) -> Response:
    """An error answered (not raised) by a view, so that ``@idempotent`` keeps it."""
    return Response(
        error_body(request, error_type, message),
        status=status_code,
        headers={REQUEST_ID_HEADER: get_request_id(request)},
    )


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: DRF's own handling, then the envelope."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # not an API error: Django's 500 handling (and DEBUG page)
    request = context["request"]
    error_type = getattr(exc, "error_type", None) or _TYPES.get(
        response.status_code, getattr(exc, "default_code", "api_error")
    )
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationError):
        message, fields = _validation_summary(response.data)
        if fields:
            extra["fields"] = fields
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else None
        message = str(detail or exc)
    response.data = error_body(request, error_type, message, **extra)
    response[REQUEST_ID_HEADER] = get_request_id(request)
    return response


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


# Django-level handlers (unrouted URLs, crashes outside DRF), for testproject.urls.

BAD_REQUEST = ErrorType(400, "invalid_request", "The request is malformed")
NOT_FOUND = ErrorType(404, "not_found", "No such resource")
SERVER_ERROR = ErrorType(500, "api_error", "Something went wrong on our side")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # Django answers its SuspiciousOperations here, among them a body over
    # DATA_UPLOAD_MAX_MEMORY_SIZE on an endpoint that @idempotent does not guard.
    if isinstance(exception, RequestDataTooBig):
        return _envelope_response(request, REQUEST_TOO_LARGE)
    return _envelope_response(request, BAD_REQUEST)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _envelope_response(request, NOT_FOUND)


def handler500(request: HttpRequest) -> HttpResponse:
    return _envelope_response(request, SERVER_ERROR)
