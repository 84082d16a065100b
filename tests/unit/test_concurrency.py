"""Many requests with one key at once: the view runs exactly once.

These tests race real requests (threads in this process, and processes under
gunicorn) and count how many times the view body really ran. The races run on
each store (the ``store`` fixture); the crash tests show how the stores differ.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from django_idempotency.models import IdempotencyRecord
from tests.helpers import StoreUnderTest, assert_one_run, post_as, race
from tests.servers.http import gunicorn
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


def test_twenty_threads_while_the_first_is_still_running(
    alice: User, atomic_requests: bool, store: StoreUnderTest
) -> None:
    views.hold.clear()
    views.started.clear()
    with ThreadPoolExecutor(RACERS) as pool:
        first = pool.submit(same_key, alice, 1)
        assert views.started.wait(10)
        others = pool.submit(same_key, alice, RACERS - 1)
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


@pytest.fixture
def server_user(transactional_db: None) -> User:
    return User.objects.create_user("alice", password="alice-pw")


@pytest.mark.slow
def test_twenty_processes_one_key_run_the_view_once(
    server_user: User, store: StoreUnderTest
) -> None:
    with gunicorn(workers=4, env={"TEST_IDEMPOTENCY_STORE": store.path}) as server:
        for round_ in range(3):
            barrier = threading.Barrier(RACERS)

            def one(i: int, round_: int = round_, barrier: threading.Barrier = barrier):
                barrier.wait()
                return server.request(
                    "/t/widgets", b'{"name": "p"}', headers={"Idempotency-Key": f"proc-{round_}"}
                )

            with ThreadPoolExecutor(RACERS) as pool:
                replies = list(pool.map(one, range(RACERS)))
            statuses = [r.status for r in replies]
            assert set(statuses) <= {201, 409}, statuses
            bodies = {r.body for r in replies if r.status == 201}
            assert len(bodies) == 1
            assert (
                sum("Idempotent-Replayed" not in r.headers for r in replies if r.status == 201) == 1
            )
            assert Widget.objects.count() == round_ + 1


@pytest.mark.slow
@pytest.mark.parametrize("store", ["database"], indirect=True)
def test_a_killed_worker_leaves_no_claim_and_the_retry_runs_once(
    server_user: User, tmp_path: Path, store: StoreUnderTest
) -> None:
    """The database store; test_redis_store has the Redis store's counterpart."""
    mark = tmp_path / "started"
    body = b'{"name": "crash"}'
    with gunicorn(workers=1, env={"TEST_IDEMPOTENCY_STORE": store.path}) as server:
        pool = ThreadPoolExecutor(1)
        doomed = pool.submit(
            server.request,
            "/t/widgets",
            body,
            headers={"Idempotency-Key": "crash", "X-Test-Delay": "30", "X-Test-Mark": str(mark)},
        )
        deadline = time.monotonic() + 20
        while not mark.exists():
            assert time.monotonic() < deadline, "the view never started"
            time.sleep(0.05)
        if connection.vendor in ("postgresql", "mysql"):
            busy = server.request("/t/widgets", body, headers={"Idempotency-Key": "crash"})
            assert busy.status == 409
            assert json.loads(busy.body)["error"]["type"] == "idempotency_key_in_use"
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(OSError):  # the connection drops with the worker
            doomed.result(timeout=30)
        pool.shutdown()
        assert Widget.objects.count() == 0, "the dead worker's writes were rolled back"
        assert IdempotencyRecord.objects.count() == 0
        deadline = time.monotonic() + 20
        while True:
            retry = server.request("/t/widgets", body, headers={"Idempotency-Key": "crash"})
            if retry.status not in (502, 503) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert retry.status == 201
        assert "Idempotent-Replayed" not in retry.headers
        replay = server.request("/t/widgets", body, headers={"Idempotency-Key": "crash"})
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.body == retry.body
    assert Widget.objects.count() == 1
