"""DRF's JSONParser, with a 400 for bodies nested too deeply to parse.

DRF catches ``ValueError`` only; JSON nested near Python's recursion limit
raises ``RecursionError`` instead, which would be a 500. ``@idempotent`` refuses
such bodies on the POSTs it guards; this covers the other endpoints (PATCH).

And a 413 for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` whatever DRF's
version: newer DRF reads ``request.body`` first (Django refuses it there),
older DRF parses the stream, where Django's limit is never checked.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import parsers, status
from rest_framework.exceptions import APIException, ParseError

from django_idempotency.errors import REQUEST_TOO_LARGE


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    error_type = REQUEST_TOO_LARGE.type
    default_detail = REQUEST_TOO_LARGE.message


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        request = (parser_context or {}).get("request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            raise RequestTooLarge()
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
