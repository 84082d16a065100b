"""The Redis store keeps a response only once the view's writes have committed,
whatever opened the transaction, and frees the key when they did not.

Against the shared Redis of ``REDIS_URL``, on the suite's database (SQLite and
PostgreSQL), with real commits (``transaction=True``). A failing commit is a
row whose deferred foreign key is checked only at ``COMMIT``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django_redis")

from django.db import connection
from rest_framework.test import APIClient

from tests.helpers import StoreUnderTest, post
from tests.testapp import redis_views
from tests.testapp.models import Widget

pytestmark = [
    pytest.mark.redis,
    pytest.mark.urls("tests.testapp.redis_views"),
    pytest.mark.parametrize("store", ["redis"], indirect=True),
    pytest.mark.django_db(transaction=True),
]

# Each way a transaction can be open around the decorated view.
WAYS = ["atomic-around", "atomic-dispatch", "atomic-requests"]


@pytest.fixture(params=WAYS)
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param != "atomic-requests":
        yield "/" + request.param
        return
    saved = connection.settings_dict["ATOMIC_REQUESTS"]
    connection.settings_dict["ATOMIC_REQUESTS"] = True
    try:
        yield "/plain"
    finally:
        connection.settings_dict["ATOMIC_REQUESTS"] = saved


@pytest.fixture
def client(alice: Any, settings: Any) -> APIClient:
    # A lease far longer than the test: a key that becomes free was released,
    # not lapsed.
    settings.IDEMPOTENCY_LEASE = 600
    redis_views.runs.clear()
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(alice)
    return client


@pytest.fixture
def deferred_table() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {redis_views.DEFERRED_PARENT} (id integer PRIMARY KEY)")
        cursor.execute(
            f"CREATE TABLE {redis_views.DEFERRED_CHILD} (id integer PRIMARY KEY, parent_id "
            f"integer REFERENCES {redis_views.DEFERRED_PARENT} (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {redis_views.DEFERRED_CHILD}")
            cursor.execute(f"DROP TABLE {redis_views.DEFERRED_PARENT}")


def states(store: StoreUnderTest, key: str) -> list[str]:
    return [record.state for record in store.records() if record.key == key]


def test_the_response_is_stored_once_the_transaction_committed(
    client: APIClient, store: StoreUnderTest, path: str
) -> None:
    first = post(client, path, {"name": "ok"}, key="ok")
    assert first.status_code == 201
    assert states(store, "ok") == ["completed"]
    replay = post(client, path, {"name": "ok"}, key="ok")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert redis_views.runs["ok"] == 1
    assert Widget.objects.count() == 1


@pytest.mark.skipif(
    connection.vendor == "mysql",
    reason="MySQL and MariaDB check constraints at once, never deferred",
)
def test_a_failed_commit_frees_the_key_for_the_retry(
    client: APIClient, store: StoreUnderTest, path: str, deferred_table: None
) -> None:
    failed = post(client, path, {"name": "fc"}, key="fc", HTTP_X_TEST_FAIL_COMMIT="1")
    assert failed.status_code == 500, "the commit failed after the view had answered"
    assert Widget.objects.count() == 0, "the view's writes rolled back"
    assert states(store, "fc") == [], "nothing stored, and the claim released (not lapsed)"
    retry = post(client, path, {"name": "fc"}, key="fc")
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry, "never a replay of writes that rolled back"
    assert redis_views.runs["fc"] == 2
    assert Widget.objects.count() == 1
    assert post(client, path, {"name": "fc"}, key="fc")["Idempotent-Replayed"] == "true"


def test_a_transaction_that_rolls_back_frees_the_key_for_the_retry(
    client: APIClient, store: StoreUnderTest, path: str
) -> None:
    first = post(client, path, {"name": "rb", "outcome": "rollback"}, key="rb")
    assert first.status_code == 201
    assert Widget.objects.count() == 0
    assert states(store, "rb") == []
    retry = post(client, path, {"name": "rb", "outcome": "rollback"}, key="rb")
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert redis_views.runs["rb"] == 2
