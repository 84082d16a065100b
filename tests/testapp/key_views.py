"""A view that passes request.idempotency_key on, as to a payment provider
(tests/unit/test_record_key.py): it records every value it was given."""

from __future__ import annotations

from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from django_idempotency import idempotent

from .models import Widget

#: Every request.idempotency_key the view was given, in order.
given: list[str] = []


@api_view(["POST"])
@idempotent
def charge(request: Request) -> Response:
    given.append(request.idempotency_key)  # type: ignore[attr-defined]
    Widget.objects.create(name="charge")
    outcome = request.headers.get("X-Test-Outcome", "ok")
    if outcome == "raise":
        raise RuntimeError("the provider was charged, then the view failed")
    status = {"500": 500, "422": 422}.get(outcome, 201)
    return Response({"key": request.idempotency_key}, status=status)  # type: ignore[attr-defined]
