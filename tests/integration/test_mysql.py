"""The database store on MariaDB and MySQL, over real HTTP (gunicorn -w 4).

Runs in the MariaDB pass of scripts/test (DATABASE_URL=mysql://...), under
both isolation levels that MySQL shops use (Django's READ COMMITTED, and
REPEATABLE READ, InnoDB's own default) with ATOMIC_REQUESTS off and on. Each
test counts how many times the view really ran (its Widget rows).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from django_idempotency.models import IdempotencyRecord
from tests.helpers import envelope, poll, race
from tests.servers.http import Reply, Server, gunicorn
from tests.testapp.models import Widget

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(connection.vendor != "mysql", reason="runs in the MariaDB pass"),
]

RACERS = 30
SETTINGS = [
    pytest.param(("read committed", "0"), id="read-committed"),
    pytest.param(("read committed", "1"), id="read-committed-atomic-requests"),
    pytest.param(("repeatable read", "0"), id="repeatable-read"),
    pytest.param(("repeatable read", "1"), id="repeatable-read-atomic-requests"),
]


@pytest.fixture(scope="module", params=SETTINGS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    isolation, atomic_requests = request.param
    env = {
        "TEST_MYSQL_ISOLATION": isolation,
        "TEST_ATOMIC_REQUESTS": atomic_requests,
        "TEST_IDEMPOTENCY_SCOPE": "tests.testapp.views.tenant_scope",
    }
    with gunicorn(workers=4, env=env) as served:
        yield served


@pytest.fixture
def alice(transactional_db: None) -> User:
    return User.objects.create_user("alice", password="alice-pw")


def send(
    server: Server,
    key: str,
    body: dict[str, str],
    tenant: str = "t1",
    extra: dict[str, str] | None = None,
) -> Reply:
    """POST to the widget viewset, or to the APIView that a body with an
    ``outcome`` makes fail or succeed."""
    return server.request(
        "/t/apiview" if "outcome" in body else "/t/widgets",
        json.dumps(body).encode(),
        headers={"Idempotency-Key": key, "X-Tenant": tenant, **(extra or {})},
    )


def first_runs(replies: list[Reply]) -> list[Reply]:
    return [r for r in replies if r.status == 201 and "Idempotent-Replayed" not in r.headers]


def test_thirty_way_races_run_the_view_once(server: Server, alice: User) -> None:
    for round_ in range(3):
        key = f"race-{round_}"
        replies = race(RACERS, lambda i, key=key: send(server, key, {"name": "r"}))  # type: ignore[misc]
        assert [r.status for r in replies if r.status not in (201, 409)] == []
        assert len(first_runs(replies)) == 1
        assert all(
            envelope(r)["type"] == "idempotency_key_in_use" for r in replies if r.status == 409
        )
        assert Widget.objects.count() == round_ + 1


def test_a_duplicate_of_a_running_request_is_told_at_once_and_other_keys_never_wait(
    server: Server, alice: User, tmp_path: Path
) -> None:
    mark = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            send,
            server,
            "slow",
            {"name": "s"},
            "t1",
            {"X-Test-Delay": "3", "X-Test-Mark": str(mark)},
        )
        assert poll(mark.exists, 10), "the slow view never started"
        for _ in range(3):
            began = time.monotonic()
            duplicate = send(server, "slow", {"name": "s"})
            assert duplicate.status == 409, duplicate.body
            assert envelope(duplicate)["type"] == "idempotency_key_in_use"
            assert "Retry-After" in duplicate.headers
            assert time.monotonic() - began < 1.5, "the duplicate waited for the first"
        began = time.monotonic()
        other = send(server, "unrelated", {"name": "u"})
        assert other.status == 201
        assert time.monotonic() - began < 1.5, "an unrelated key waited for the slow view"
        assert slow.result(timeout=30).status == 201
    replay = send(server, "slow", {"name": "s"})
    assert replay.status == 201 and replay.headers.get("Idempotent-Replayed") == "true"
    assert Widget.objects.count() == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(("Case-X", "t1"), ("case-x", "t1"), id="key-case"),
        pytest.param(('"pad "', "t1"), ("pad", "t1"), id="key-trailing-space"),
        pytest.param(("order-1", "client:C1"), ("order-1", "client:c1"), id="scope-case"),
    ],
)
def test_keys_and_scopes_that_a_collation_would_merge_stay_apart(
    server: Server, alice: User, first: tuple[str, str], second: tuple[str, str]
) -> None:
    a = send(server, first[0], {"name": "first"}, tenant=first[1])
    b = send(server, second[0], {"name": "second"}, tenant=second[1])
    assert a.status == b.status == 201, (a.body, b.body)
    assert "Idempotent-Replayed" not in b.headers
    assert json.loads(b.body)["name"] == "second"
    # The same requests again replay each its own response.
    again = send(server, first[0], {"name": "first"}, tenant=first[1])
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert json.loads(again.body)["name"] == "first"
    assert IdempotencyRecord.objects.count() == 2
    assert Widget.objects.count() == 2


def test_a_failed_view_frees_the_key_for_exactly_one_next_claimant(
    server: Server, alice: User, tmp_path: Path
) -> None:
    """The first claimant's view raises while 30 others retry on "in use":
    exactly one of them runs the view, the others get its replay, and no
    request ends in a deadlock or a lock wait (5xx)."""
    for round_ in range(3):
        key = f"fails-{round_}"
        mark = tmp_path / f"started-{round_}"

        def retry_until_answered(i: int, key: str = key) -> Reply:
            deadline = time.monotonic() + 20
            while True:
                reply = send(server, key, {"outcome": "ok"})
                if reply.status != 409 or time.monotonic() > deadline:
                    return reply
                time.sleep(0.05)

        with ThreadPoolExecutor(1) as pool:
            failing = pool.submit(
                send,
                server,
                key,
                {"outcome": "raise"},
                "t1",
                {"X-Test-Delay": "0.5", "X-Test-Mark": str(mark)},
            )
            assert poll(mark.exists, 10)
            replies = race(RACERS, retry_until_answered)
            assert failing.result(timeout=30).status == 500
        assert [r.status for r in replies if r.status != 201] == []
        assert len(first_runs(replies)) == 1
        assert Widget.objects.count() == round_ + 1, "the failed view's write stayed"
