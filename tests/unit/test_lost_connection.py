"""The database connection dies while the view runs (real PostgreSQL).

Another session ends the request's backend with ``pg_terminate_backend`` (as a
server restart, a failover or an administrator would) while the view waits;
the view then uses the database again. The server has rolled the transaction
back, claim and writes together, so the answer is the package's retryable 503
in its envelope, never Django's 500, and the retry runs the view once.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connection, connections
from django.test import AsyncClient

from tests.helpers import poll, post_as
from tests.testapp import async_views, views
from tests.testapp.models import Widget

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_terminate_backend"),
    pytest.mark.django_db(transaction=True),
]

# The backends of other sessions of this test database, in a transaction.
IN_TRANSACTION = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND state LIKE 'idle in transaction%%'
"""


def _post(user: User, body: dict[str, str], **extra: str) -> Any:
    return post_as(user, "/t/apiview", body, key="lost", **extra)


def _in_transaction() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(IN_TRANSACTION)
        return [pid for (pid,) in cursor.fetchall()]


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "no_middleware"])
def test_a_connection_ended_mid_view_answers_503_and_the_retry_runs(
    alice: User, atomic_requests: bool, middleware: bool, settings: Any
) -> None:
    if not middleware:
        settings.MIDDLEWARE = [
            m for m in settings.MIDDLEWARE if not m.endswith("DatabaseUnavailableMiddleware")
        ]
    views.gates["lost"] = gate = threading.Event()
    views.started.clear()
    body = {"name": "lost", "outcome": "read_again"}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, alice, body, HTTP_X_TEST_GATE="lost")
        try:
            assert views.started.wait(10)
            (pid,) = poll(_in_transaction, 10)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        finally:
            gate.set()
        response = first.result(timeout=30)
    assert response.status_code == 503, response.content[:500]
    error = json.loads(response.content)["error"]
    assert error["type"] == "idempotency_store_unavailable"
    assert response["Retry-After"] == "1"
    assert response["X-Should-Retry"] == "true"
    assert Widget.objects.count() == 0  # rolled back with the claim

    retry = _post(alice, body)
    assert retry.status_code == 201, retry.content[:500]
    assert "Idempotent-Replayed" not in retry
    assert Widget.objects.count() == 1


def test_an_async_views_connection_ended_mid_view_answers_503_and_the_retry_runs(
    alice: User,
) -> None:
    body = json.dumps({"name": "lost", "outcome": "read_again"})

    def send(**headers: str) -> Any:
        client = AsyncClient()
        client.force_login(alice)

        async def go() -> Any:
            return await client.post(
                "/t/async",
                body,
                content_type="application/json",
                headers={"Idempotency-Key": "lost", **headers},
            )

        try:
            return async_to_sync(go)()
        finally:
            connections.close_all()

    async_views.started.clear()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(send, **{"X-Test-Delay": "2"})
        assert async_views.started.wait(10)
        (pid,) = poll(_in_transaction, 10)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        response = first.result(timeout=30)
    assert response.status_code == 503, response.content[:500]
    assert json.loads(response.content)["error"]["type"] == "idempotency_store_unavailable"
    assert response["Retry-After"] == "1"
    assert Widget.objects.count() == 0

    retry = send()
    assert retry.status_code == 201, retry.content[:500]
    assert Widget.objects.count() == 1
