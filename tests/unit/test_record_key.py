"""``request.idempotency_key``: one value per record of a key.

The view passes it on as a payment provider's idempotency key. Every attempt of
one request must give the provider the same value, also after an attempt that
failed (its claim released: the provider may have charged already); a request
that reuses the key after its record expired is a new request, and must not
get the old charge back.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord
from tests.helpers import StoreUnderTest, post
from tests.testapp import key_views
from tests.testapp.models import Widget


@pytest.fixture(autouse=True)
def _given() -> Any:
    key_views.given.clear()
    yield
    key_views.given.clear()


def charge(client: APIClient, outcome: str = "ok", body: Any = None, key: str = "order-1") -> Any:
    client.raise_request_exception = False
    return post(client, "/t/charge", body or {"amount": 100}, key=key, HTTP_X_TEST_OUTCOME=outcome)


def test_every_retry_of_one_request_gets_the_same_value(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    assert charge(client_alice, "500").status_code == 500  # released
    assert charge(client_alice, "raise").status_code == 500  # released, by an exception
    first = charge(client_alice)
    assert first.status_code == 201
    replay = charge(client_alice)
    assert replay["Idempotent-Replayed"] == "true"
    assert len(key_views.given) == 3
    assert len(set(key_views.given)) == 1, "one value for every attempt of the request"
    assert first.json()["key"] == replay.json()["key"] == key_views.given[0]


def test_a_key_reused_after_its_record_expired_gets_a_new_value(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    first = charge(client_alice)
    store.expire_all()
    second = charge(client_alice)
    assert "Idempotent-Replayed" not in second
    assert first.json()["key"] != second.json()["key"]
    # ...and that new value too holds for its own retries.
    assert charge(client_alice).json()["key"] == second.json()["key"]


def test_a_released_attempt_is_forgotten_when_its_ttl_ends(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    charge(client_alice, "500")
    store.expire_all()
    charge(client_alice)
    assert key_views.given[0] != key_views.given[1]


def test_another_body_after_a_released_attempt_is_another_request(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    charge(client_alice, "500", {"amount": 100})
    created = charge(client_alice, "ok", {"amount": 200})
    assert created.status_code == 201
    assert key_views.given[0] != key_views.given[1]
    # Its own retries replay it; the first body now conflicts.
    assert charge(client_alice, "ok", {"amount": 200})["Idempotent-Replayed"] == "true"
    assert charge(client_alice, "ok", {"amount": 100}).status_code == 409


def test_users_get_different_values_for_one_key(
    client_alice: APIClient, client_bob: APIClient, store: StoreUnderTest
) -> None:
    a = charge(client_alice).json()["key"]
    b = charge(client_bob).json()["key"]
    assert a != b
    assert Widget.objects.count() == 2


def test_a_refused_attempt_is_not_remembered_but_keeps_an_earlier_one(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    charge(client_alice, "422")  # refused (a released 4xx): nothing to remember
    if store.name == "database":
        assert not IdempotencyRecord.objects.exists()
    charge(client_alice, "500")
    charge(client_alice, "422")
    charge(client_alice)
    assert key_views.given[1] == key_views.given[2] == key_views.given[3]


@pytest.mark.usefixtures("database_store")
def test_on_the_database_store_what_atomic_requests_changes(
    client_alice: APIClient, atomic_requests: bool
) -> None:
    """As docs/requests.rst says: the marker of a released attempt is written in
    the request's transaction, so under ATOMIC_REQUESTS a view that raises
    takes it with its rollback; an answered 5xx keeps it."""
    charge(client_alice, "500")
    charge(client_alice, "500")
    assert key_views.given[0] == key_views.given[1]
    charge(client_alice, "raise", key="order-2")
    charge(client_alice, "ok", key="order-2")
    assert (key_views.given[2] == key_views.given[3]) is not atomic_requests


@pytest.mark.usefixtures("database_store")
def test_a_marker_that_cannot_be_written_is_logged_and_the_retry_gets_a_new_value(
    client_alice: APIClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import DatabaseError

    from django_idempotency.stores.database import DatabaseStore

    def fail(self: DatabaseStore, alias: str, claim: Any) -> None:
        raise DatabaseError("connection lost")

    with monkeypatch.context() as patched:
        patched.setattr(DatabaseStore, "_keep_released", fail)
        assert charge(client_alice, "500").status_code == 500  # released, marker lost
    assert "Could not keep the released attempt of order-1" in caplog.text
    assert not IdempotencyRecord.objects.exists()
    # As after a crash: the retry runs, under a new value.
    retry = charge(client_alice)
    assert retry.status_code == 201
    assert key_views.given[0] != key_views.given[1] == retry.json()["key"]
