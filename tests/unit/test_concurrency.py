"""Many requests with one key at once: the view runs exactly once.

These tests race real requests (threads in this process) and count how many
times the view body really ran, on each store (the ``store`` fixture). The
races across gunicorn's processes are in tests/integration/test_workers.py.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from tests.helpers import StoreUnderTest, assert_one_run, post_as, race
from tests.testapp import views
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db(transaction=True)

RACERS = 20


def same_key(user: User, n: int = RACERS) -> list[Any]:
    return race(n, lambda i: post_as(user, "/t/widgets", {"name": "r"}, key="race"))


def test_twenty_threads_one_key_run_the_view_once(
    alice: User, atomic_requests: bool, store: StoreUnderTest
) -> None:
    assert_one_run(same_key(alice))
    assert [r.state for r in store.records()] == ["completed"]


def test_ten_duplicates_while_the_first_is_still_running(
    alice: User, atomic_requests: bool, store: StoreUnderTest
) -> None:
    # Ten, not twenty: on SQLite the duplicates take the one write lock in turn
    # once the first is done, and more of them only add turns.
    views.hold.clear()
    views.started.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(same_key, alice, 1)
        assert views.started.wait(10)
        others = pool.submit(same_key, alice, 10)
        # PostgreSQL, MariaDB/MySQL and Redis answer "in use" at once, without waiting for the
        # first; but with ATOMIC_REQUESTS on SQLite every request first waits for
        # the one write lock (BEGIN IMMEDIATE), whatever the store.
        sqlite_atomic = atomic_requests and connection.vendor == "sqlite"
        if connection.vendor in ("postgresql", "mysql") or (
            store.name == "redis" and not sqlite_atomic
        ):
            assert all(r.status_code == 409 for r in others.result(timeout=10))
        time.sleep(0.3)
        views.hold.set()
        responses = first.result() + others.result()
    assert_one_run(responses)


def test_mixed_bodies_under_one_key_run_once(alice: User, store: StoreUnderTest) -> None:
    responses = race(
        RACERS, lambda i: post_as(alice, "/t/widgets", {"name": f"body-{i % 4}"}, key="mixed")
    )
    assert Widget.objects.count() == 1
    winner = Widget.objects.get().name
    for r in responses:
        if r.status_code == 201:
            assert json.loads(r.content)["name"] == winner
        else:
            assert r.status_code == 409
            assert json.loads(r.content)["error"]["type"] in {
                "idempotency_conflict",
                "idempotency_key_in_use",
            }


def test_different_keys_all_run(alice: User) -> None:
    responses = race(10, lambda i: post_as(alice, "/t/widgets", {"name": "x"}, key=f"key-{i}"))
    assert [r.status_code for r in responses] == [201] * 10
    assert Widget.objects.count() == 10
