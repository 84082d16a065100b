"""SQLite older than 3.35 (no ``INSERT ... RETURNING``): the claim still works.

Debian 11 and Ubuntu 20.04 ship SQLite 3.34 and 3.31; Django 4.2 supports 3.21
and later. No old SQLite is to be had here (no Debian package of one, and the
only pysqlite3-binary on the package index bundles a current SQLite), so this
simulates one: Django's feature flag says what an old SQLite would say, and
any statement with RETURNING fails as it would there. Guarded requests must
still run once and replay, never answer 503.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.backends.sqlite3.base import SQLiteCursorWrapper
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord
from tests.helpers import assert_one_run, make_record, post, post_as, race
from tests.testapp.models import Widget


@pytest.fixture(autouse=True)
def old_sqlite(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    # On the class for the connections that threads open, and on this one,
    # which may have cached the value already.
    monkeypatch.setattr(type(connection.features), "can_return_columns_from_insert", False)
    monkeypatch.setattr(connection.features, "can_return_columns_from_insert", False)
    sent: list[str] = []
    execute = SQLiteCursorWrapper.execute

    def old_execute(self: Any, query: str, params: Any = None) -> Any:
        sent.append(query)
        if "RETURNING" in query.upper():
            raise sqlite3.OperationalError('near "RETURNING": syntax error')
        return execute(self, query, params)

    monkeypatch.setattr(SQLiteCursorWrapper, "execute", old_execute)
    yield sent


@pytest.mark.django_db
def test_claim_replay_and_conflict(client_alice: APIClient, old_sqlite: list[str]) -> None:
    first = post(client_alice, "/t/widgets", {"name": "a"}, key="old")
    assert first.status_code == 201
    replay = post(client_alice, "/t/widgets", {"name": "a"}, key="old")
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    conflict = post(client_alice, "/t/widgets", {"name": "b"}, key="old")
    assert conflict.status_code == 409
    assert json.loads(conflict.content)["error"]["type"] == "idempotency_conflict"
    assert Widget.objects.count() == 1
    assert any("INSERT OR IGNORE" in query for query in old_sqlite)


@pytest.mark.django_db
def test_an_expired_record_is_taken_over(client_alice: APIClient, alice: User) -> None:
    make_record("expired", scope=f"user:{alice.pk}", expires_in=timedelta(seconds=-1))
    response = post(client_alice, "/t/widgets", {"name": "a"}, key="expired")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    (record,) = IdempotencyRecord.objects.filter(key="expired")
    assert record.state == "completed"
    assert record.expires_at > record.created_at


@pytest.mark.django_db
def test_a_released_claim_lets_the_retry_run(client_alice: APIClient) -> None:
    failed = post(client_alice, "/t/apiview", {"outcome": "503"}, key="retry")
    assert failed.status_code == 503
    # Only the marker that keeps the request's request.idempotency_key is left.
    assert not IdempotencyRecord.objects.filter(key="retry").exclude(state="released").exists()
    retried = post(client_alice, "/t/apiview", {"outcome": "ok"}, key="retry")
    assert retried.status_code == 201
    assert IdempotencyRecord.objects.get(key="retry").state == "completed"


@pytest.mark.django_db(transaction=True)
def test_twenty_threads_one_key_run_the_view_once(alice: User) -> None:
    assert_one_run(race(20, lambda i: post_as(alice, "/t/widgets", {"name": "r"}, key="race")))
    assert list(IdempotencyRecord.objects.values_list("state", flat=True)) == ["completed"]
