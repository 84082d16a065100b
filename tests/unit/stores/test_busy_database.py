"""A slow view holds its transaction: what other requests get meanwhile.

On PostgreSQL a request with another key runs at once and a duplicate gets
``409 idempotency_key_in_use`` at once. SQLite has one writer: the slow view's
transaction holds the write lock, so every other guarded request waits for it,
for at most the busy timeout (the ``timeout`` database option). Within it, a
new key runs and a duplicate replays; past it, both get a retryable 503, never
"in use" about a key that nobody used. Real threads on the suite's database (a
file on SQLite), each with its own connection; the view's runs are counted.
The same over HTTP, under gunicorn: tests/integration/test_busy_database_http.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.db.backends.signals import connection_created

from tests.helpers import post_as
from tests.testapp import views
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db(transaction=True)

SQLITE = connection.vendor == "sqlite"
# What a 503 may be on SQLite: the decorator's, or under ATOMIC_REQUESTS the
# middleware's (Django's BEGIN IMMEDIATE runs before the decorator).
BUSY_TYPES = {"idempotency_store_unavailable", "service_unavailable"}


def _post(user: User, key: str, name: str, **extra: str) -> Any:
    return post_as(user, "/t/widgets", {"name": name}, key=key, **extra)


@pytest.fixture
def short_busy_timeout() -> Iterator[None]:
    """New SQLite connections wait at most 0.3 s for the write lock."""

    def set_timeout(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA busy_timeout = 300")

    connection_created.connect(set_timeout)
    connections.close_all()  # this thread's connection is made again, with it
    try:
        yield
    finally:
        connection_created.disconnect(set_timeout)


@pytest.fixture
def slow_view(alice: User) -> Iterator[tuple[Future[Any], threading.Event]]:
    """A first request whose view runs (its write done) until the event is set."""
    views.gates["slow"] = gate = threading.Event()
    views.started.clear()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, alice, "slow", "slow", HTTP_X_TEST_GATE="slow")
        assert views.started.wait(10)
        try:
            yield first, gate
        finally:
            gate.set()


def assert_busy(response: Any) -> None:
    assert response.status_code == 503, response.content
    error = json.loads(response.content)["error"]
    assert error["type"] in BUSY_TYPES
    assert response["Retry-After"] == "1"
    assert response["X-Should-Retry"] == "true"


def test_a_new_key_beside_a_slow_view_is_never_told_in_use(
    alice: User,
    atomic_requests: bool,
    short_busy_timeout: None,
    slow_view: tuple[Future[Any], threading.Event],
) -> None:
    first, gate = slow_view
    other = _post(alice, "never-used", "other")
    if SQLITE:
        assert_busy(other)  # the lock stayed held past the busy timeout
    else:
        assert other.status_code == 201, other.content
    gate.set()
    assert first.result(timeout=10).status_code == 201
    retried = _post(alice, "never-used", "other")
    assert retried.status_code == 201  # SQLite: runs now; PostgreSQL: the replay
    assert sorted(Widget.objects.values_list("name", flat=True)) == ["other", "slow"]


def _send_while_held(
    pool: ThreadPoolExecutor, alice: User, key: str, name: str, *, elsewhere: int
) -> Future[Any]:
    """Send while the slow view runs: on SQLite the request waits for the write
    lock (the suite's busy timeout: 20 s); elsewhere it answers ``elsewhere`` at once."""
    answer = pool.submit(_post, alice, key, name)
    if SQLITE:
        time.sleep(0.5)
        assert not answer.done()
    else:
        assert answer.result(timeout=10).status_code == elsewhere
    return answer


def test_a_new_key_waits_for_the_lock_within_the_busy_timeout(
    alice: User, slow_view: tuple[Future[Any], threading.Event]
) -> None:
    first, gate = slow_view
    with ThreadPoolExecutor(1) as pool:
        other = _send_while_held(pool, alice, "never-used", "other", elsewhere=201)
        gate.set()
        assert other.result(timeout=10).status_code == 201
    assert first.result(timeout=10).status_code == 201
    assert Widget.objects.count() == 2


def test_a_duplicate_of_a_slow_view_never_runs_it_again(
    alice: User, short_busy_timeout: None, slow_view: tuple[Future[Any], threading.Event]
) -> None:
    first, gate = slow_view
    duplicate = _post(alice, "slow", "slow")
    if SQLITE:
        assert_busy(duplicate)
    else:
        assert duplicate.status_code == 409
        assert json.loads(duplicate.content)["error"]["type"] == "idempotency_key_in_use"
    gate.set()
    stored = first.result(timeout=10)
    assert stored.status_code == 201
    replay = _post(alice, "slow", "slow")
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == stored.content
    assert Widget.objects.count() == 1


def test_a_duplicate_waits_within_the_busy_timeout_then_replays(
    alice: User, slow_view: tuple[Future[Any], threading.Event]
) -> None:
    first, gate = slow_view
    with ThreadPoolExecutor(1) as pool:
        duplicate = _send_while_held(pool, alice, "slow", "slow", elsewhere=409)
        gate.set()
        stored = first.result(timeout=10)
        answer = duplicate.result(timeout=10)
    if SQLITE:
        assert answer.status_code == 201
        assert answer["Idempotent-Replayed"] == "true"
        assert answer.content == stored.content
    assert Widget.objects.count() == 1
