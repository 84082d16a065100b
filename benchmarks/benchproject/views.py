"""The same view, mounted once per configuration that the benchmark compares.

Each is the plain DRF create: validate the JSON body with a serializer, insert
one row, answer 201 with the row. Only the idempotency mechanism differs.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency import idempotent

from .serializers import OrderSerializer


def create_order(request: Request) -> Response:
    serializer = OrderSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    serializer.save()
    return Response(serializer.data, status=status.HTTP_201_CREATED)


class PlainOrderView(APIView):
    """No idempotency handling (the baseline; also what drf-idempotency's middleware wraps)."""

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return create_order(request)


class AtomicOrderView(APIView):
    """No idempotency handling, but in a transaction, as under ``ATOMIC_REQUESTS``.

    A reference point: the database store runs the view in a transaction, and
    this shows what the transaction alone (BEGIN and COMMIT) costs.
    """

    @transaction.atomic
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return create_order(request)


class IdempotentOrderView(APIView):
    """This project's ``@idempotent``, on whichever store the settings name."""

    @idempotent
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return create_order(request)


def _idempotencykey_view() -> Any:
    # drf-idempotencykey works as a mixin on the view class; imported here so
    # that the project still starts where that peer is not installed.
    try:
        from drf_idempotencykey.mixins import DrfIdempotencyKeyMixin
    except ImportError:
        return None

    class IdempotencyKeyOrderView(DrfIdempotencyKeyMixin, PlainOrderView):
        """drf-idempotencykey's mixin on the same view."""

    return IdempotencyKeyOrderView
