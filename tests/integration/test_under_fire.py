"""The demo (testproject/) under gunicorn with 4 workers, raced, killed and slowed down.

"Never twice, never lost, never leaked", counted in the demo's own books: the
jobs and the account's credits (each job reserves its cost once). Every job's
description is the idempotency key it was created with, so a job can be traced
to its key.

The default run does a few rounds of each; ``scripts/soak`` sets SOAK_ROUNDS for
many. Runs in the PostgreSQL and MariaDB passes of scripts/test, on a database
of its own.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import CACHE_STORE, envelope, on_mysql, on_postgresql, poll, race
from tests.servers.demo import Demo, demo_on
from tests.servers.demo import scratch_database as database_on_the_server
from tests.servers.http import Reply, Server, worker_of_connection
from tests.servers.redis import redis_server

# Real servers started, killed and stopped: minutes, not the inner loop.
pytestmark = pytest.mark.slow

COST = 10 * 50
CREDITS = 100_000_000
RACERS = 24
# What a client sees of a worker killed under its request.
DROPPED = (OSError, http.client.HTTPException)


def rounds(default: int) -> int:
    return int(os.environ.get("SOAK_ROUNDS") or default)


def job(key: str, price: int = 50) -> bytes:
    return json.dumps(
        {
            "type": "data_collection",
            "description": key,
            "files_needed": 10,
            "accepted_formats": ["image/jpeg"],
            "price_per_file_cents": price,
        }
    ).encode()


@dataclass
class Api:
    demo: Demo
    server: Server
    secret: str
    store: str

    def post(
        self,
        key: str,
        body: bytes | None = None,
        *,
        delay: float = 0,
        after_commit: float = 0,
        timeout: float = 60,
    ) -> Reply:
        headers = {"Authorization": f"Bearer {self.secret}", "Idempotency-Key": key}
        if delay:
            headers["X-Demo-Delay"] = str(delay)
        if after_commit:
            headers["X-Demo-Delay-After-Commit"] = str(after_commit)
        return self.server.request(
            "/v1/jobs", body if body is not None else job(key), headers=headers, timeout=timeout
        )

    def jobs(self, key: str | None = None) -> int:
        if key is None:
            return int(self.demo.sql("SELECT count(*) FROM api_job")[0][0])  # type: ignore[call-overload]
        return int(
            self.demo.sql(  # type: ignore[call-overload]
                "SELECT count(*) FROM api_job WHERE description = %s", key
            )[0][0]
        )

    def balance(self) -> int:
        return int(self.demo.sql("SELECT credits_cents FROM api_account")[0][0])  # type: ignore[call-overload]

    def records(self, key: str) -> list[tuple[Any, ...]]:
        return self.demo.sql(
            "SELECT state FROM django_idempotency_idempotencyrecord WHERE key = %s", key
        )


@contextmanager
def scratch_database(suffix: str) -> Iterator[str]:
    if not (on_postgresql() or on_mysql()):
        pytest.skip("runs in the PostgreSQL and MariaDB passes of scripts/test")
    with database_on_the_server("fire_" + suffix) as url:
        yield url


# The Redis store's lease in these tests: short, so that its window is quick to see.
LEASE = 2.0


@pytest.fixture(scope="module", params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """The demo under gunicorn -w 4 on each store (the Redis one on a redis-server of its own)."""
    with ExitStack() as stack:
        database = stack.enter_context(scratch_database(request.param))
        env = {}
        if request.param == "redis":
            if shutil.which("redis-server") is None:
                pytest.skip("needs redis-server")
            redis = stack.enter_context(redis_server())
            env = {
                "REDIS_URL": redis.url,
                "IDEMPOTENCY_STORE": CACHE_STORE,
                "IDEMPOTENCY_LEASE": str(LEASE),
            }
        demo = demo_on(database)
        secret = demo.api_key("fire", CREDITS)
        server = stack.enter_context(demo.server(workers=4, env=env))
        yield Api(demo, server, secret, request.param)


def only_on(api: Api, store: str) -> None:
    if api.store != store:
        pytest.skip(f"about the {store} store")


# These find the request's session in pg_stat_activity, or end it with
# PostgreSQL's idle_in_transaction_session_timeout; on MariaDB the killed
# workers of test_workers_killed_at_random_moments_never_run_a_key_twice and
# tests/unit/test_concurrency.py cover crashes.
postgresql_only = pytest.mark.skipif(on_mysql(), reason="finds or ends sessions the PostgreSQL way")


class Books:
    """The demo's books before a test, to check what it changed: jobs and credits."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.jobs, self.balance = api.jobs(), api.balance()

    def assert_paid_once(self, jobs: int, cost: int | None = None) -> None:
        assert self.api.jobs() == self.jobs + jobs, "one job per key"
        paid = self.balance - self.api.balance()
        assert paid == (COST * jobs if cost is None else cost), "credits reserved once per job"


@pytest.fixture
def books(api: Api) -> Books:
    return Books(api)


# Races across processes.


def test_same_key_races_run_once_across_processes(api: Api, books: Books) -> None:
    n = rounds(3)
    for round_ in range(n):
        key = f"race-{round_}"
        # Odd rounds keep the first request running while the others arrive.
        delay = 0.3 if round_ % 2 else 0
        replies = race(RACERS, lambda i, key=key, delay=delay: api.post(key, delay=delay))
        created = [r for r in replies if r.status == 201]
        assert len(created) + sum(r.status == 409 for r in replies) == RACERS, [
            (r.status, r.body[:200]) for r in replies
        ]
        for reply in replies:
            if reply.status == 409:
                assert envelope(reply)["type"] == "idempotency_key_in_use"
                assert reply.headers["Retry-After"]
        fresh = [r for r in created if "Idempotent-Replayed" not in r.headers]
        assert len(fresh) == 1, "exactly one request ran"
        for replay in created:
            assert replay.body == fresh[0].body, "a replay is byte-exact"
            assert replay.headers["Location"] == fresh[0].headers["Location"]
            assert replay.headers["Content-Type"] == fresh[0].headers["Content-Type"]
        assert api.jobs(key) == 1
    books.assert_paid_once(n)


def test_mixed_bodies_under_one_key_run_once_across_processes(api: Api, books: Books) -> None:
    n = rounds(3)
    cost = 0
    prices = [50 + i % 4 for i in range(RACERS)]  # four different requests
    for round_ in range(n):
        key = f"mixed-{round_}"
        delay = 0.3 if round_ % 2 else 0
        replies = race(
            RACERS, lambda i, key=key, delay=delay: api.post(key, job(key, prices[i]), delay=delay)
        )
        ran = [
            i
            for i, r in enumerate(replies)
            if r.status == 201 and "Idempotent-Replayed" not in r.headers
        ]
        assert len(ran) == 1
        winner = prices[ran[0]]
        for i, reply in enumerate(replies):
            if reply.status == 201:
                assert prices[i] == winner, "only the same request is replayed"
                assert reply.body == replies[ran[0]].body
            else:
                assert reply.status == 409, (reply.status, reply.body[:200])
                kinds = {"idempotency_key_in_use"} | (
                    {"idempotency_conflict"} if prices[i] != winner else set()
                )
                assert envelope(reply)["type"] in kinds
        assert api.demo.sql(
            "SELECT price_per_file_cents FROM api_job WHERE description = %s", key
        ) == [(winner,)]
        cost += 10 * winner
    books.assert_paid_once(n, cost)


# Crashes: a worker killed with SIGKILL.

IN_VIEW = """
SELECT pid, client_port FROM pg_stat_activity
WHERE datname = current_database() AND state = 'idle in transaction' AND query LIKE %s
"""


def wait_until(condition: Callable[[], Any], seconds: float = 30) -> Any:
    value = poll(condition, seconds, interval=0.02)
    assert value, "timed out"
    return value


def job_being_created(api: Api) -> tuple[int, int]:
    """The database session of the request that is inside the view, its job inserted
    and not committed (the demo sleeps there on X-Demo-Delay): (backend pid, client port)."""
    rows = wait_until(lambda: api.demo.sql(IN_VIEW, 'INSERT INTO "api_job"%'))
    assert len(rows) == 1, rows
    pid, port = rows[0]
    return int(pid), int(port)


def session_gone(api: Api, pid: int) -> bool:
    return not api.demo.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid)


def kill_after_commit(api: Api, key: str) -> None:
    """POST ``key`` and SIGKILL its worker once the job has committed, while the
    demo pauses in its on_commit hook (before the client gets an answer)."""
    with ThreadPoolExecutor(1) as pool:
        doomed = pool.submit(api.post, key, after_commit=30)
        wait_until(lambda: api.jobs(key) == 1)
        ((_, port),) = wait_until(lambda: api.demo.sql(AFTER_COMMIT))
        worker = worker_of_connection(api.server, port)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(DROPPED):
            doomed.result(timeout=30)


def answered(api: Api, key: str) -> Reply:
    """What a client does: retry the key until it gets an answer other than 'in use'."""
    while True:
        try:
            reply = api.post(key)
        except DROPPED:  # a worker died with the connection
            time.sleep(0.05)
            continue
        if reply.status == 409 and envelope(reply)["type"] == "idempotency_key_in_use":
            time.sleep(0.05)
            continue
        return reply


@postgresql_only
def test_a_worker_killed_in_the_view_leaves_nothing_and_the_retry_runs_once(
    api: Api, books: Books
) -> None:
    n = rounds(2)
    for round_ in range(n):
        key = f"crash-{round_}"
        balance = api.balance()
        with ThreadPoolExecutor(1) as pool:
            doomed = pool.submit(api.post, key, delay=30)
            backend, port = job_being_created(api)
            busy = api.post(key)
            assert busy.status == 409 and envelope(busy)["type"] == "idempotency_key_in_use"
            worker = worker_of_connection(api.server, port)
            assert worker is not None, "the worker running the view"
            os.kill(worker, signal.SIGKILL)
            with pytest.raises(DROPPED):
                doomed.result(timeout=30)
        wait_until(lambda backend=backend: session_gone(api, backend))
        assert api.jobs(key) == 0, "no job is half created"
        assert api.balance() == balance, "no credits were taken"
        if api.store == "database":
            assert api.records(key) == [], "the key is not wedged"
        # On Redis the dead worker's claim holds the key until its lease lapses
        # (LEASE seconds); the client's retries get "in use" until then.
        retry = answered(api, key)
        assert retry.status == 201 and "Idempotent-Replayed" not in retry.headers
        replay = api.post(key)
        assert replay.headers["Idempotent-Replayed"] == "true" and replay.body == retry.body
        assert api.jobs(key) == 1
    books.assert_paid_once(n)


# Idle (out of any transaction) after the commit: Django's own COMMIT, or the
# store's record write that carries it (psycopg 3, the claim's block being the
# transaction; pg_stat_activity may cut the long text before its COMMIT).
AFTER_COMMIT = """
SELECT pid, client_port FROM pg_stat_activity
WHERE datname = current_database() AND state = 'idle'
  AND (query = 'COMMIT' OR query LIKE 'INSERT INTO "django_idempotency_idempotencyrecord"%%')
"""


@postgresql_only
def test_a_worker_killed_after_commit_before_answering_is_replayed_not_rerun(
    api: Api, books: Books
) -> None:
    """The response is stored in the commit that creates the job, so a client that
    lost the answer gets it replayed: the job is not created a second time."""
    only_on(api, "database")
    n = rounds(2)
    for round_ in range(n):
        key = f"late-crash-{round_}"
        kill_after_commit(api, key)
        retry = answered(api, key)
        assert retry.status == 201 and retry.headers["Idempotent-Replayed"] == "true"
        ((job_id,),) = api.demo.sql("SELECT id FROM api_job WHERE description = %s", key)
        assert json.loads(retry.body)["id"] == job_id
        assert api.jobs(key) == 1
    books.assert_paid_once(n)


# A job exists exactly when its key's response is stored: they commit together.
# Checked in one statement, so in one snapshot, again and again while workers die.
SPLIT = """
SELECT 'job without response', j.description FROM api_job j
WHERE j.description LIKE %s AND NOT EXISTS (
    SELECT 1 FROM django_idempotency_idempotencyrecord r
    WHERE r.key = j.description AND r.state = 'completed')
UNION ALL
SELECT 'response without job', r.key FROM django_idempotency_idempotencyrecord r
WHERE r.key LIKE %s AND r.state = 'completed' AND NOT EXISTS (
    SELECT 1 FROM api_job j WHERE j.description = r.key)
"""


# Requests that pause in the view (the job inserted, not committed) or after the
# commit (the answer not yet sent), so that kills land in both.
PACES: list[dict[str, float]] = [
    {},
    {"delay": 0.02},
    {"delay": 0.1},
    {"after_commit": 0.02},
    {"after_commit": 0.1},
]


def test_workers_killed_at_random_moments_never_run_a_key_twice(api: Api, books: Books) -> None:
    """No crash window on the database store: wherever a worker dies (before the
    claim, in the view, between commit and response), its key ran once or not at
    all, and the client's retry completes it exactly once."""
    only_on(api, "database")  # the Redis store has a window: see test_redis_crash_window
    keys = [f"chaos-{i}" for i in range(15 * rounds(2))]
    todo = list(reversed(keys))
    lock = threading.Lock()
    stop = threading.Event()
    seen: list[Reply] = []
    splits: list[Any] = []
    first_answers: dict[str, Reply] = {}
    kills = 0

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                key = todo.pop()
            while True:
                try:
                    reply = api.post(key, **random.choice(PACES))
                except DROPPED:
                    continue
                with lock:
                    seen.append(reply)
                if reply.status == 201:
                    first_answers[key] = reply
                    break
                assert (
                    reply.status == 409 and envelope(reply)["type"] == "idempotency_key_in_use"
                ), (
                    reply.status,
                    reply.body[:300],
                )
                time.sleep(0.02)

    def killer() -> None:
        nonlocal kills
        while not stop.wait(random.uniform(0.05, 0.3)):
            workers = api.server.worker_pids()
            if workers:
                try:
                    os.kill(random.choice(workers), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass

    def monitor() -> None:
        while not stop.wait(0.01):
            rows = api.demo.sql(SPLIT, "chaos-%", "chaos-%")
            if rows:
                splits.append(rows)

    with ThreadPoolExecutor(8) as pool:
        background = [pool.submit(killer), pool.submit(monitor)]
        clients = [pool.submit(client) for _ in range(6)]
        try:
            for future in clients:
                future.result(timeout=600)
        finally:
            stop.set()
        for future in background:
            future.result()
    assert splits == [], "a job and its stored response were ever apart"
    assert kills > 0
    assert set(first_answers) == set(keys)
    for key in keys:
        assert api.jobs(key) == 1, key
    replayed_first = sum("Idempotent-Replayed" in r.headers for r in first_answers.values())
    print(
        f"\n{kills} workers killed, {len(seen)} answers; {replayed_first} keys were answered "
        f"first by a replay (their first run's response was lost with its worker)"
    )
    books.assert_paid_once(len(keys))


# Slow views: the server ends a transaction that outlives its timeout.


@postgresql_only
def test_a_view_that_outlives_the_servers_timeout_never_commits_twice(
    api: Api, books: Books
) -> None:
    """PostgreSQL terminates a session idle in its transaction for over a second:
    the slow request's claim and job go with it. The retry runs once; the slow
    request, waking up, cannot commit, answers 503 and overwrites nothing."""
    only_on(api, "database")
    name = api.demo.sql("SELECT current_database()")[0][0]
    api.demo.sql(f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = 1000')
    try:
        key = "slow"
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(api.post, key, delay=4)
            backend, _ = job_being_created(api)
            busy = api.post(key)
            assert busy.status == 409 and envelope(busy)["type"] == "idempotency_key_in_use"
            wait_until(lambda: session_gone(api, backend))
            retry = api.post(key)
            assert retry.status == 201 and "Idempotent-Replayed" not in retry.headers
            late = slow.result(timeout=30)
        assert late.status == 503, (late.status, late.body[:300])
        assert envelope(late)["type"] in {"service_unavailable", "idempotency_store_unavailable"}
        replay = api.post(key)
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.body == retry.body, "the late request overwrote nothing"
        assert api.jobs(key) == 1
    finally:
        api.demo.sql(f'ALTER DATABASE "{name}" RESET idle_in_transaction_session_timeout')
    books.assert_paid_once(1)


@postgresql_only
def test_redis_crash_window_is_the_lease(api: Api, books: Books) -> None:
    """The Redis store's documented window: a worker that dies after the view's
    writes committed but before the response was stored leaves its claim "in
    use" until the lease lapses; then a retry runs the view a second time."""
    only_on(api, "redis")
    key = "redis-window"
    # Without ATOMIC_REQUESTS the demo's on_commit pause runs in the view,
    # after its transaction committed and before the store keeps the response.
    kill_after_commit(api, key)
    busy = api.post(key)
    assert busy.status == 409 and envelope(busy)["type"] == "idempotency_key_in_use"
    retry = answered(api, key)  # "in use" until the lease lapses
    assert retry.status == 201 and "Idempotent-Replayed" not in retry.headers
    assert api.jobs(key) == 2, "the second run that the Redis store's docs warn of"
    books.assert_paid_once(2)


STALLED = """
SELECT pid, client_port FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


@postgresql_only
def test_a_stalled_worker_never_has_its_response_overwrite_anothers(api: Api, books: Books) -> None:
    """A worker frozen (SIGSTOP) in the view for longer than the Redis lease.

    Database store: its claim lives in its transaction, with no lease to lapse, so
    the duplicate gets "in use" until it resumes and commits: one run.
    Redis store: the lease lapses, a duplicate claims the key and runs (the
    demo's credit UPDATE then waits on the frozen request's row lock); the frozen
    request resumes and commits, but its response is not stored over the
    duplicate's: the replay is the duplicate's answer.
    """
    key = "stalled"
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(api.post, key, delay=0.5)
        _, port = job_being_created(api)
        worker = worker_of_connection(api.server, port)
        assert worker is not None
        os.kill(worker, signal.SIGSTOP)
        try:
            time.sleep(LEASE * 1.5)
            if api.store == "database":
                busy = api.post(key)
                assert busy.status == 409 and envelope(busy)["type"] == "idempotency_key_in_use"
                second = None
            else:
                while True:  # until the lease has lapsed and a duplicate claims the key
                    second = pool.submit(api.post, key)
                    # Claimed: it is in the view, waiting on the frozen request's lock.
                    wait_until(lambda second=second: second.done() or api.demo.sql(STALLED))
                    if not second.done():
                        break
                    busy = second.result()
                    assert busy.status == 409 and envelope(busy)["type"] == "idempotency_key_in_use"
                    time.sleep(0.1)
        finally:
            os.kill(worker, signal.SIGCONT)
        first_reply = first.result(timeout=30)
        assert first_reply.status == 201
        if second is None:
            replay = api.post(key)
            assert replay.body == first_reply.body
            assert api.jobs(key) == 1
            books.assert_paid_once(1)
        else:
            second_reply = second.result(timeout=30)
            assert second_reply.status == 201
            assert "Idempotent-Replayed" not in second_reply.headers
            replay = api.post(key)
            assert replay.headers["Idempotent-Replayed"] == "true"
            assert replay.body == second_reply.body != first_reply.body
            assert api.jobs(key) == 2, "the lease lapsed: the Redis store's window"
            books.assert_paid_once(2)
