"""A slow view holds its transaction, over HTTP under gunicorn (2 workers):
on SQLite, past the busy timeout, a new key and a duplicate both get a
retryable 503; on PostgreSQL the new key runs and the duplicate is "in use".
In-process, with threads: tests/unit/stores/test_busy_database.py."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from tests.helpers import poll
from tests.servers.http import Reply, gunicorn
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db(transaction=True)

SQLITE = connection.vendor == "sqlite"


def assert_busy_reply(reply: Reply) -> None:
    assert reply.status == 503, reply.body[:500]
    assert json.loads(reply.body)["error"]["type"] == "idempotency_store_unavailable"
    assert reply.headers["Retry-After"] == "1"
    assert reply.headers["X-Should-Retry"] == "true"


def test_over_http_a_slow_view_with_a_new_key_and_a_duplicate(tmp_path: Path) -> None:
    """gunicorn (2 workers), SQLite's busy timeout 1 s, a view that takes 4 s."""
    mark = tmp_path / "running"
    User.objects.create_user("alice", password="alice-pw")
    slow = json.dumps({"name": "slow"}).encode()
    other = json.dumps({"name": "other"}).encode()
    with gunicorn(workers=2, env={"TEST_SQLITE_TIMEOUT": "1"}) as server:

        def send(body: bytes, key: str, **headers: str) -> Reply:
            return server.request("/t/widgets", body, headers={"Idempotency-Key": key, **headers})

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(
                send, slow, "slow", **{"X-Test-Delay": "4", "X-Test-Mark": str(mark)}
            )
            assert poll(mark.exists, 10), "the slow view never started"
            new_key = pool.submit(send, other, "never-used")
            duplicate = send(slow, "slow")
            if SQLITE:
                assert_busy_reply(new_key.result(timeout=30))
                assert_busy_reply(duplicate)
            else:
                assert new_key.result(timeout=30).status == 201
                assert duplicate.status == 409
                assert json.loads(duplicate.body)["error"]["type"] == "idempotency_key_in_use"
            stored = first.result(timeout=30)
        assert stored.status == 201
        assert send(other, "never-used").status == 201
        replay = send(slow, "slow")
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert replay.body == stored.body
    assert sorted(Widget.objects.values_list("name", flat=True)) == ["other", "slow"]
