"""Views whose transaction is opened around @idempotent, for the Redis store's
commit tests (tests/unit/stores/test_redis_commit.py), with their own URLconf.

``X-Test-Fail-Commit: 1`` adds a row whose deferred foreign key is checked only
at COMMIT, so the commit itself fails (the table is the test's own); the body
``{"outcome": "rollback"}`` answers 201 but marks the transaction for rollback.
Headers are not part of the fingerprint, so a retry with the same key and body
may commit.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.db import connection, transaction
from django.urls import path
from django.utils.decorators import method_decorator
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency import idempotent
from tests.testapp.models import Widget

DEFERRED_PARENT = "redis_commit_parent"
DEFERRED_CHILD = "redis_commit_child"
#: How many times each view body ran, by the request's name (rolled-back runs too).
runs: Counter[str] = Counter()


def _work(request: Request) -> Response:
    runs[str(request.data.get("name", ""))] += 1
    widget = Widget.objects.create(name=str(request.data.get("name", "")))
    if request.META.get("HTTP_X_TEST_FAIL_COMMIT"):
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {DEFERRED_CHILD} (id, parent_id) VALUES (%s, %s)", [widget.pk, -1]
            )
    if request.data.get("outcome") == "rollback":
        transaction.set_rollback(True)
    return Response({"id": widget.pk}, status=201)


@api_view(["POST"])
@transaction.atomic
@idempotent
def atomic_around(request: Request) -> Response:
    return _work(request)


@method_decorator(transaction.atomic, name="dispatch")
class AtomicDispatch(APIView):
    @idempotent
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return _work(request)


@api_view(["POST"])
@idempotent
def plain(request: Request) -> Response:
    """Under ATOMIC_REQUESTS, Django opens the transaction around the view."""
    return _work(request)


urlpatterns = [
    path("atomic-around", atomic_around),
    path("atomic-dispatch", AtomicDispatch.as_view()),
    path("plain", plain),
]
