"""What each demo operation answers, for the OpenAPI schema: status by status.

The demo runs without drf-spectacular (the package's "minimal" test session),
so the decorators fall back to doing nothing when it is not installed.

Every error is in the one envelope, ``IdempotencyError``: the component that
``django_idempotency.contrib.openapi`` registers for the errors of ``@idempotent``.
Documenting the demo's own errors with that same component (rather than a
look-alike) keeps each status one schema: a ``oneOf`` of two identical shapes
would match both, which no validator accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from drf_spectacular.utils import (
        OpenApiParameter,
        OpenApiResponse,
        extend_schema,
        extend_schema_field,
        extend_schema_serializer,
        extend_schema_view,
    )
except ImportError:  # pragma: no cover - the minimal session
    OpenApiParameter = OpenApiResponse = None  # type: ignore[assignment,misc]

    def extend_schema(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:  # type: ignore[misc]
        return lambda target: target

    extend_schema_field = extend_schema_serializer = extend_schema_view = extend_schema  # type: ignore[assignment]

ENVELOPE = {"$ref": "#/components/schemas/IdempotencyError"}

# What each status means in the demo, and its envelope types.
ERRORS = {
    400: "`invalid_request`: the body or a parameter is invalid (`error.fields` names them)",
    401: "`authentication_required` or `authentication_failed`: no valid API key",
    402: "`insufficient_credits`: not enough credits for this job; purchase credits and "
    "retry with the same key (this answer is not kept)",
    404: "`not_found`: no such resource (another account's jobs do not exist for you)",
    409: "the operation cannot be done in the resource's state",
    413: "`request_too_large`: the body is larger than this server accepts",
    415: "`unsupported_media_type`: send `Content-Type: application/json`",
}


def answers(success: dict[int, Any], *statuses: int, **meanings: str) -> dict[int, Any]:
    """``responses=`` of one operation: its success and its error statuses.

    ``meanings`` gives a status its own description (``s409="..."``).
    """
    responses: dict[int, Any] = dict(success)
    if OpenApiResponse is None:  # pragma: no cover
        return responses
    for status in statuses:
        description = meanings.get(f"s{status}", ERRORS[status])
        responses[status] = OpenApiResponse(ENVELOPE, description=description)
    return responses


def string_schema(**schema: Any) -> Callable[[Any], Any]:
    """The OpenAPI schema of a custom serializer field."""
    return extend_schema_field({"type": "string", **schema})


def limit_parameter(minimum: int, maximum: int, default: int) -> list[Any]:
    if OpenApiParameter is None:  # pragma: no cover
        return []
    return [
        OpenApiParameter(
            "limit",
            {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default},
            OpenApiParameter.QUERY,
            description="How many jobs to list at most.",
        )
    ]
