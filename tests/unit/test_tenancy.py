"""Tenancy: one caller's key can never read, replay, block or conflict with another's.

The scope (by default the user) is part of everything stored and looked up: the
record's unique (scope, key), the PostgreSQL advisory lock, the Redis key, and
the scoped key handed to the view. Run on both stores.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from django_idempotency.keys import scoped_key
from django_idempotency.stores.base import RequestRecord
from django_idempotency.stores.database.locks import lock_id as _lock_id
from tests.helpers import StoreUnderTest, poll, post, post_as
from tests.testapp import views
from tests.testapp.models import Widget


@pytest.mark.django_db
def test_another_users_identical_request_runs_and_never_replays(
    client_alice: APIClient, client_bob: APIClient, alice: User, bob: User, store: StoreUnderTest
) -> None:
    a = post(client_alice, "/t/widgets", {"name": "same"}, key="order-1")
    b = post(client_bob, "/t/widgets", {"name": "same"}, key="order-1")
    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b
    assert a.content != b.content
    assert sorted((r.scope, r.key) for r in store.records()) == sorted(
        [(f"user:{alice.pk}", "order-1"), (f"user:{bob.pk}", "order-1")]
    )
    assert set(Widget.objects.values_list("owner", flat=True)) == {"alice", "bob"}


@pytest.mark.django_db
def test_another_users_different_body_is_not_a_conflict(
    client_alice: APIClient, client_bob: APIClient, store: StoreUnderTest
) -> None:
    post(client_alice, "/t/widgets", {"name": "alice's"}, key="order-1")
    b = post(client_bob, "/t/widgets", {"name": "bob's"}, key="order-1")
    assert b.status_code == 201
    assert b.json()["name"] == "bob's"
    # Nor on another endpoint: each user's keys are their own namespace.
    assert post(client_bob, "/t/function", {}, key="order-2").status_code == 201
    assert post(client_alice, "/t/widgets", {"name": "x"}, key="order-2").status_code == 201


@pytest.mark.django_db
def test_the_scoped_key_given_to_the_view_differs_per_user(
    client_alice: APIClient, client_bob: APIClient, alice: User, bob: User, store: StoreUnderTest
) -> None:
    a = post(client_alice, "/t/widgets", {"name": "n"}, key="k").json()["key"]
    b = post(client_bob, "/t/widgets", {"name": "n"}, key="k").json()["key"]
    assert a != b


def test_the_claim_lock_is_per_scope() -> None:
    def lock(scope: str, key: str) -> int:
        return _lock_id(RequestRecord(scope, key, "f", "POST", "/", None, None))  # type: ignore[arg-type]

    assert lock("user:1", "k") != lock("user:2", "k")
    # Scope and key are not simply concatenated: ("a", "b:c") is not ("a:b", "c").
    assert lock("a", "b:c") != lock("a:b", "c")
    assert scoped_key("a", "b:c") != scoped_key("a:b", "c")


@pytest.mark.django_db
@override_settings(IDEMPOTENCY_SCOPE=lambda request: request.META.get("HTTP_X_TENANT"))
def test_custom_scopes_that_would_concatenate_alike_stay_apart(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    first = post(client_alice, "/t/widgets", {"name": "1"}, key="b:c", HTTP_X_TENANT="a")
    second = post(client_alice, "/t/widgets", {"name": "2"}, key="c", HTTP_X_TENANT="a:b")
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert len(store.records()) == 2


def claims_held(store: StoreUnderTest) -> int:
    if store.name == "redis":
        return sum(r.state == "in_flight" for r in store.records())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_key_in_flight_for_one_user_does_not_block_another(
    alice: User, bob: User, store: StoreUnderTest
) -> None:
    """Alice's request is still running; Bob's with the same key runs, not 409."""
    views.hold.clear()
    views.started.clear()

    with ThreadPoolExecutor(2) as pool:
        alices = pool.submit(post_as, alice, "/t/widgets", {"name": "a"}, key="shared")
        assert views.started.wait(10)
        bobs = pool.submit(post_as, bob, "/t/widgets", {"name": "b"}, key="shared")
        if store.name == "redis" or connection.vendor == "postgresql":
            # Bob's claim goes through while Alice's is held: two claims at once.
            # (SQLite serialises writers, so there Bob waits for Alice's commit,
            # and then runs.)
            assert poll(lambda: claims_held(store) == 2, 10), "Bob was blocked by Alice's key"
        views.hold.set()
        a, b = alices.result(timeout=30), bobs.result(timeout=30)
    assert a.status_code == b.status_code == 201, (a.content, b.content)
    assert "Idempotent-Replayed" not in b
    assert json.loads(b.content)["name"] == "b"
    assert Widget.objects.count() == 2


@pytest.mark.django_db
def test_a_user_cannot_replay_or_conflict_by_guessing_the_scoped_key(
    client_alice: APIClient, client_bob: APIClient, store: StoreUnderTest
) -> None:
    """The scoped key the view sees is an output, never an input: sending it as a key is just a key."""
    a = post(client_alice, "/t/widgets", {"name": "a"}, key="k")
    b = post(client_bob, "/t/widgets", {"name": "a"}, key=a.json()["key"])
    assert b.status_code == 201
    assert "Idempotent-Replayed" not in b
