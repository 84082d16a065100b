"""Requests across worker processes under gunicorn: twenty at once on one key
run the view once; a worker killed in the middle of a view never makes its key
run twice (the database store rolls the dead worker's writes back and frees
the key at once; the Redis store keeps the key until the claim's lease lapses)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from django_idempotency.models import IdempotencyRecord
from tests.helpers import CACHE_STORE, StoreUnderTest, envelope, race
from tests.servers.http import Reply, Server, gunicorn
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db(transaction=True)

BODY = b'{"name": "crash"}'
KEY = {"Idempotency-Key": "crash"}


@pytest.fixture
def server_user(transactional_db: None) -> User:
    return User.objects.create_user("alice", password="alice-pw")


def test_twenty_processes_one_key_run_the_view_once(
    server_user: User, store: StoreUnderTest
) -> None:
    with gunicorn(workers=4, env={"TEST_IDEMPOTENCY_STORE": store.path}) as server:
        for round_ in range(3):
            replies = race(
                20,
                lambda i, round_=round_: server.request(
                    "/t/widgets", b'{"name": "p"}', headers={"Idempotency-Key": f"proc-{round_}"}
                ),
            )
            statuses = [r.status for r in replies]
            assert set(statuses) <= {201, 409}, statuses
            bodies = {r.body for r in replies if r.status == 201}
            assert len(bodies) == 1
            assert (
                sum("Idempotent-Replayed" not in r.headers for r in replies if r.status == 201) == 1
            )
            assert Widget.objects.count() == round_ + 1


def start_in_view(pool: ThreadPoolExecutor, server: Server, mark: Path) -> Future[Reply]:
    """A request whose view marks ``mark`` and then sleeps, once it is in the view."""
    doomed = pool.submit(
        server.request,
        "/t/widgets",
        BODY,
        headers={**KEY, "X-Test-Delay": "30", "X-Test-Mark": str(mark)},
    )
    deadline = time.monotonic() + 20
    while not mark.exists():
        assert time.monotonic() < deadline, "the view never started"
        time.sleep(0.05)
    return doomed


def kill_its_worker(server: Server, doomed: Future[Reply]) -> None:
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(OSError):  # the connection drops with the worker
        doomed.result(timeout=30)


def retry_until_answered(server: Server, waiting: set[int], seconds: float) -> Reply:
    deadline = time.monotonic() + seconds
    while True:
        retry = server.request("/t/widgets", BODY, headers=KEY)
        if retry.status not in waiting or time.monotonic() > deadline:
            return retry
        time.sleep(0.2)


@pytest.mark.parametrize("store", ["database"], indirect=True)
def test_a_killed_worker_leaves_no_claim_and_the_retry_runs_once(
    server_user: User, tmp_path: Path, store: StoreUnderTest
) -> None:
    with (
        gunicorn(workers=1, env={"TEST_IDEMPOTENCY_STORE": store.path}) as server,
        ThreadPoolExecutor(1) as pool,
    ):
        doomed = start_in_view(pool, server, tmp_path / "started")
        if connection.vendor in ("postgresql", "mysql"):
            envelope(server.request("/t/widgets", BODY, headers=KEY), 409, "idempotency_key_in_use")
        kill_its_worker(server, doomed)
        assert Widget.objects.count() == 0, "the dead worker's writes were rolled back"
        assert IdempotencyRecord.objects.count() == 0
        retry = retry_until_answered(server, {502, 503}, 20)
        assert retry.status == 201
        assert "Idempotent-Replayed" not in retry.headers
        replay = server.request("/t/widgets", BODY, headers=KEY)
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.body == retry.body
    assert Widget.objects.count() == 1


@pytest.mark.redis
@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_a_killed_worker_holds_the_key_until_its_lease_lapses_then_the_retry_runs(
    server_user: User, store: StoreUnderTest, tmp_path: Path
) -> None:
    """The difference from the database store: the dead worker's writes stay."""
    env = {"TEST_IDEMPOTENCY_STORE": CACHE_STORE, "TEST_IDEMPOTENCY_LEASE": "1"}
    log = tmp_path / "gunicorn.log"
    with (
        log.open("w") as output,
        gunicorn(workers=1, env=env, output=output) as server,
        ThreadPoolExecutor(1) as pool,
    ):
        doomed = start_in_view(pool, server, tmp_path / "started")
        envelope(server.request("/t/widgets", BODY, headers=KEY), 409, "idempotency_key_in_use")
        kill_its_worker(server, doomed)
        assert Widget.objects.count() == 1, "the dead worker's write committed"
        retry = retry_until_answered(server, {409, 502, 503}, 30)
        assert retry.status == 201, retry.body
        assert "Idempotent-Replayed" not in retry.headers
        replay = server.request("/t/widgets", BODY, headers=KEY)
        assert replay.headers["Idempotent-Replayed"] == "true"
    assert Widget.objects.count() == 2, "the view ran again once the lease lapsed"
    (taken_over,) = [line for line in log.read_text().splitlines() if "lapsed" in line]
    assert "POST /t/widgets" in taken_over, "the take-over is logged"
