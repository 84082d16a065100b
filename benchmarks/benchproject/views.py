"""The same view, mounted once per configuration that the benchmark compares.

Each is the plain DRF create: validate the JSON body with a serializer, insert
one row, answer 201 with the row. Only the idempotency mechanism differs.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.authentication import TokenAuthentication
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


class FloorDatabaseOrderView(APIView):
    """No idempotency handling: the view in a transaction, plus two trivial statements.

    A reference point, not a store: the round trips (BEGIN, a statement, the
    view's INSERT, a statement, COMMIT) below which no store can go that
    claims a key before the view and completes it after, in the view's
    transaction, one statement each. ``SELECT 1`` costs the server next to
    nothing, so what this shows is the round trips' own cost.
    """

    @transaction.atomic
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        response = create_order(request)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return response


_RECORDS = "django_idempotency_idempotencyrecord"
_FLOOR_BODY = b'{"id": 1, "sku": "abc-123", "quantity": 2, "note": "benchmark order"}'


class FloorDatabaseWritesOrderView(APIView):
    """No idempotency handling: the view in a transaction, plus the database
    store's two writes as plain SQL.

    A reference point, not a store: an INSERT of a record into the store's own
    table (same columns, same indexes) before the view and an UPDATE of it by
    primary key after, in the view's transaction, with none of the store's
    lookup, lock, fingerprint or Python. Any store that keeps a durable record
    per request in the view's transaction writes at least this much.
    """

    @transaction.atomic
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {_RECORDS} (scope, key, digest, fingerprint, method, path, state, "
                "response_headers, created_at, expires_at) "
                "VALUES (%s, %s, %s, %s, 'POST', %s, 'in_flight', '[]', %s, %s) RETURNING id",
                [
                    f"floor:{request.user.pk}",
                    key := uuid.uuid4().hex,  # a new record every time, whatever the client sends
                    hashlib.sha256(key.encode()).hexdigest(),
                    "f" * 64,
                    request.path,
                    now,
                    now + timedelta(minutes=10),
                ],
            )
            pk = cursor.fetchone()[0]
        response = create_order(request)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {_RECORDS} SET state = 'completed', response_status = %s, "
                "response_headers = %s, response_body = %s WHERE id = %s",
                [201, '[["Content-Type", "application/json"]]', _FLOOR_BODY, pk],
            )
        return response


class FloorDatabaseInsertOrderView(APIView):
    """No idempotency handling: the view in a transaction, plus a trivial
    statement before it and one INSERT of a finished record after it.

    A reference point, not a store: the floor of a store that claims without
    writing (one statement that looks the key up, here ``SELECT 1``) and keeps
    its record with one write in the view's transaction (an INSERT of the
    finished record into the store's own table, same columns and indexes), with
    none of the store's lock, fingerprint or Python.
    """

    @transaction.atomic
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        response = create_order(request)
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {_RECORDS} (scope, key, digest, fingerprint, method, path, "
                "state, response_status, response_headers, response_body, created_at, "
                "expires_at) VALUES (%s, %s, %s, %s, 'POST', %s, 'completed', %s, %s, %s, %s, %s)",
                [
                    f"floor:{request.user.pk}",
                    key := uuid.uuid4().hex,  # a new record every time, whatever the client sends
                    hashlib.sha256(key.encode()).hexdigest(),
                    "f" * 64,
                    request.path,
                    201,
                    '[["Content-Type", "application/json"]]',
                    _FLOOR_BODY,
                    now,
                    now + timedelta(minutes=10),
                ],
            )
        return response


_FLOOR_REDIS_KEY = f"{settings.REDIS_PREFIX}:floor"


class FloorRedisOrderView(APIView):
    """No idempotency handling: the view, plus two trivial Redis round trips.

    A reference point, not a store: a GET of a key that does not exist before
    and after the view, through the same django-redis client as the Redis
    store (the ``idempotency`` cache). Any store that claims a key before the
    view and stores the response after makes at least these two round trips.
    """

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        from django_redis import get_redis_connection

        client = get_redis_connection(settings.IDEMPOTENCY_CACHE, write=True)
        client.get(_FLOOR_REDIS_KEY)
        response = create_order(request)
        client.get(_FLOOR_REDIS_KEY)
        return response


class TokenPlainOrderView(PlainOrderView):
    """The baseline, authenticated by DRF's TokenAuthentication (one SELECT per request)."""

    authentication_classes = [TokenAuthentication]


class TokenIdempotentOrderView(IdempotentOrderView):
    """``@idempotent``, authenticated by DRF's TokenAuthentication."""

    authentication_classes = [TokenAuthentication]


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


def create_sized_order(request: Request, size: int) -> Response:
    """The plain create, answering with the row padded to about ``size`` bytes of JSON."""
    serializer = OrderSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    serializer.save()
    data = dict(serializer.data)
    data["padding"] = ""
    data["padding"] = "x" * max(0, size - len(json.dumps(data)))
    return Response(data, status=status.HTTP_201_CREATED)


class SizedPlainOrderView(APIView):
    """The baseline, answering with a body of ``size`` bytes (growth.py: cost by body size)."""

    def post(self, request: Request, size: int) -> Response:
        return create_sized_order(request, size)


class SizedIdempotentOrderView(APIView):
    """``@idempotent`` on the same sized answer: the store keeps and replays ``size`` bytes."""

    @idempotent
    def post(self, request: Request, size: int) -> Response:
        return create_sized_order(request, size)
