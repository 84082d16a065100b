"""Outages: the database goes away mid-run, and comes back.

A PostgreSQL cluster of the test's own (the shared one must never stop) serves
the demo (testproject/) and the test app under gunicorn while clients keep
posting, each retrying its own key until it gets a definitive answer. While the
server is down every request fails closed with 503 in the error envelope (never
a 500), no operation runs twice, and service resumes by itself once the server
is back, without restarting gunicorn.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.helpers import CACHE_STORE, SPEC_JOB, poll
from tests.servers import run_checked
from tests.servers.demo import demo_on
from tests.servers.http import Reply, Server, gunicorn
from tests.servers.postgres import Cluster, cluster_of_the_pass
from tests.servers.redis import redis_server

# Real servers started, killed and stopped: minutes, not the inner loop.
pytestmark = pytest.mark.slow

COST = 10 * 50
CREDITS = 10_000_000
# What a client may see while the database is down or starting: the middleware's
# answer (the caller's API key could not be looked up) or the decorator's own.
OUTAGE_TYPES = {"service_unavailable", "idempotency_store_unavailable"}


def _job_poster(server: Server, secret: str) -> Callable[[str], Reply]:
    """POST /v1/jobs to the demo as the API key ``secret``, with the key as its
    description too, so that each key is a request of its own."""

    def send(key: str) -> Reply:
        body = json.dumps({**SPEC_JOB, "description": key}).encode()
        return server.request(
            "/v1/jobs",
            body,
            headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": key},
            timeout=30,
        )

    return send


def is_outage_reply(reply: Reply) -> bool:
    if reply.status != 503:
        return False
    error = json.loads(reply.body)["error"]
    assert error["type"] in OUTAGE_TYPES, error
    assert reply.headers["Request-Id"] == error["request_id"]
    return True


def assert_no_failures_but_outages(replies: list[Reply]) -> None:
    for reply in replies:
        assert reply.status in (201, 409, 503), (reply.status, reply.body[:500])
        if reply.status == 409:
            assert json.loads(reply.body)["error"]["type"] == "idempotency_key_in_use"
        if reply.status == 503:
            assert is_outage_reply(reply)


# Across processes, with a PostgreSQL server that really goes down.


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with cluster_of_the_pass() as cluster:
        yield cluster


class Clients:
    """Threads that each post new keys, retrying every key until it is answered 201."""

    def __init__(self, send: Callable[[str], Reply]) -> None:
        self.send = send
        self.replies: list[Reply] = []
        self.dropped = 0
        self.done: list[tuple[str, Reply]] = []
        self.stop = threading.Event()  # no new keys
        self.abort = threading.Event()  # give up, the test has failed
        self.lock = threading.Lock()
        self.count = 0

    def next_key(self) -> str:
        with self.lock:
            self.count += 1
            return f"outage-{self.count}"

    def run(self) -> None:
        while not self.stop.is_set():
            key = self.next_key()
            while not self.abort.is_set():  # a key, once sent, is retried until answered
                try:
                    reply = self.send(key)
                except OSError:
                    with self.lock:
                        self.dropped += 1
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.replies.append(reply)
                if reply.status == 201:
                    with self.lock:
                        self.done.append((key, reply))
                    break
                time.sleep(0.05)

    def successes(self) -> int:
        with self.lock:
            return len(self.done)


class Outage:
    """Something that can be stopped and started again."""

    def __init__(self, stop: Callable[[], None], start: Callable[[], None]) -> None:
        self.stop, self.start = stop, start


def run_outage(server: Server, outage: Outage, send: Callable[[str], Reply]) -> Clients:
    clients = Clients(send)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(clients.run) for _ in range(4)]
        try:
            assert poll(lambda: clients.successes() >= 8, 60), "no service before the outage"
            for _ in range(cycles()):
                outage.stop()
                before = len(clients.replies)
                try:
                    assert poll(
                        lambda before=before: (
                            sum(r.status != 201 for r in clients.replies[before:]) >= 8
                        ),
                        60,
                    )
                finally:
                    outage.start()
                restarted = clients.successes()
                assert poll(lambda restarted=restarted: clients.successes() >= restarted + 8, 60), (
                    "service did not resume"
                )
        except BaseException:
            clients.abort.set()
            raise
        finally:
            clients.stop.set()
        for future in futures:
            future.result(timeout=60)
    assert_no_failures_but_outages(clients.replies)
    assert any(r.status == 503 for r in clients.replies)
    return clients


def cycles() -> int:
    """Outages per test: one, or a few in the soak (SOAK_ROUNDS)."""
    return max(1, int(os.environ.get("SOAK_ROUNDS") or 0) // 5)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_demo_fails_closed_and_resumes_when_postgresql_restarts(
    cluster: Cluster, mode: str
) -> None:
    demo = demo_on(cluster.create_database(f"demo_{mode}"))
    secret = demo.api_key("outage", CREDITS)
    with demo.server(workers=2) as server:
        send = _job_poster(server, secret)
        clients = run_outage(server, Outage(lambda: cluster.stop(mode), cluster.start), send)
    keys = [key for key, _ in clients.done]
    jobs = dict(demo.sql("SELECT description, count(*) FROM api_job GROUP BY description"))
    assert set(jobs) == set(keys) and set(jobs.values()) == {1}, "every key ran exactly once"
    (balance,) = demo.sql("SELECT credits_cents FROM api_account")[0]
    assert balance == CREDITS - COST * len(keys), "credits reserved exactly once per job"


def test_test_app_fails_closed_and_resumes_when_postgresql_restarts(cluster: Cluster) -> None:
    database = cluster.create_database("testapp")
    environ = {"DATABASE_URL": database}

    def django(*args: str) -> None:
        run_checked(
            [sys.executable, "-m", "django", *args, "--settings", "tests.settings"],
            env=dict(os.environ, **environ),
        )

    django("migrate", "--no-input", "-v", "0")
    django(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('alice', password='alice-pw')",
    )
    with gunicorn(workers=2, database=database) as server:

        def send(key: str) -> Reply:
            return server.request(
                "/t/widgets",
                json.dumps({"name": key}).encode(),
                headers={"Idempotency-Key": key},
                timeout=30,
            )

        clients = run_outage(server, Outage(cluster.stop, cluster.start), send)
    with psycopg.connect(database) as conn:
        names = dict(
            conn.execute("SELECT name, count(*) FROM testapp_widget GROUP BY name").fetchall()
        )
    assert set(names) == {key for key, _ in clients.done} and set(names.values()) == {1}


def test_demo_on_redis_fails_closed_and_resumes_when_redis_restarts(cluster: Cluster) -> None:
    """The Redis store with its redis-server killed mid-run and started again (empty:
    no persistence). Requests that cannot claim get 503 idempotency_store_unavailable
    and do not run; a view already running keeps its answer (its response is not
    stored, see docs/stores.rst); no key the clients retried ran twice."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    demo = demo_on(cluster.create_database("demo_redis"))
    secret = demo.api_key("outage", CREDITS)
    with (
        redis_server() as redis,
        demo.server(
            workers=2, env={"REDIS_URL": redis.url, "IDEMPOTENCY_STORE": CACHE_STORE}
        ) as server,
    ):
        send = _job_poster(server, secret)
        clients = run_outage(server, Outage(redis.kill, redis.start), send)
    assert any(
        r.status == 503 and json.loads(r.body)["error"]["type"] == "idempotency_store_unavailable"
        for r in clients.replies
    )
    keys = [key for key, _ in clients.done]
    jobs = dict(demo.sql("SELECT description, count(*) FROM api_job GROUP BY description"))
    assert set(jobs) == set(keys) and set(jobs.values()) == {1}, "every key ran exactly once"
    (balance,) = demo.sql("SELECT credits_cents FROM api_account")[0]
    assert balance == CREDITS - COST * len(keys)
