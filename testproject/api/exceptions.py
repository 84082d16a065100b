"""The demo's own errors. django_idempotency's exception handler
(``REST_FRAMEWORK["EXCEPTION_HANDLER"]``) renders them, like every DRF error,
in the envelope::

    {"error": {"type": "...", "message": "...", "request_id": "req_..."}}
"""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response

from django_idempotency.errors import envelope, retry_headers


class InsufficientCredits(APIException):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_code = "insufficient_credits"
    default_detail = "Not enough credits for this job; purchase credits and retry"


class JobNotOpen(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "job_not_open"
    default_detail = "Only an open job can change its status"


def error_response(request: Any, status_code: int, error_type: str, message: str) -> Response:
    """An error answered (not raised) by a view, so that ``@idempotent`` keeps it."""
    return Response(
        envelope(request, error_type, message),
        status=status_code,
        headers=retry_headers(retryable=False),
    )
