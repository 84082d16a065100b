"""Async views under a real ASGI server (uvicorn), with clients that give up waiting.

A client that times out closes its connection; uvicorn tells the application,
and Django 5.0+ cancels the view's task (4.2 lets it run on). Whatever moment
the client leaves at, no key may stay in use past one lease and no operation
may run twice: the retry either runs the view for the first time or replays.

* During the claim (a slow scope function, or a paused Redis): the claim that
  the sync thread goes on to make must be released.
* During the view: on the database store the view's writes roll back with the
  claim and the retry runs it once; on the Redis store, which cannot roll them
  back, the view runs to its end and the retry replays its response.

The servers use the suite's test database, so this runs in the PostgreSQL pass
of scripts/test (the database store's transaction per request under ASGI is
PostgreSQL's to prove; SQLite serialises it all). The Redis is one of our own,
on a free port: CLIENT PAUSE would stall every other user of the shared one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import django
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from tests.conftest import CACHE_STORE, DATABASE_STORE, poll
from tests.servers import Reply, Server, redis_server, uvicorn
from tests.testapp.models import Widget

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LEASE = 2.0  # seconds: the Redis store's lease on these servers
# Django 5.0+ cancels a view whose client disconnects; 4.2 lets it finish.
CANCELS_ON_DISCONNECT = django.VERSION >= (5, 0)


@pytest.fixture(scope="module")
def servers(django_db_setup: None, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    """A uvicorn per store (two workers each), and the Redis of the Redis store's."""
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        pytest.skip("runs in the PostgreSQL pass of scripts/test")
    pytest.importorskip("uvicorn")
    pytest.importorskip("django_redis")
    env = {
        "TEST_IDEMPOTENCY_LEASE": str(LEASE),
        "TEST_IDEMPOTENCY_SCOPE": "tests.testapp.async_views.slow_scope",
    }
    with django_db_blocker.unblock(), redis_server() as redis:
        store_env = {
            "database": {"TEST_IDEMPOTENCY_STORE": DATABASE_STORE},
            "redis": {"TEST_IDEMPOTENCY_STORE": CACHE_STORE, "REDIS_URL": redis.url},
        }
        with (
            uvicorn({**env, **store_env["database"]}, workers=2) as on_database,
            uvicorn({**env, **store_env["redis"]}, workers=2) as on_redis,
        ):
            yield {"database": on_database, "redis": on_redis, "redis_url": redis.url}


@pytest.fixture
def cookie(alice: User) -> str:
    login = Client()
    login.force_login(alice)
    return f"{settings.SESSION_COOKIE_NAME}={login.cookies[settings.SESSION_COOKIE_NAME].value}"


def send(
    server: Server,
    cookie: str,
    key: str,
    *,
    timeout: float = 60,
    claim_delay: float = 0,
    view_delay: float = 0,
) -> Reply | None:
    """POST /t/async once; None if the client gave up waiting (timed out)."""
    headers = {"Cookie": cookie, "Idempotency-Key": key}
    if claim_delay:
        headers["X-Test-Claim-Delay"] = str(claim_delay)
    if view_delay:
        headers["X-Test-Delay"] = str(view_delay)
    try:
        return server.request("/t/async", b'{"name": "order"}', headers=headers, timeout=timeout)
    except TimeoutError:
        return None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return None
        raise


def retry_until_done(
    server: Server, cookie: str, key: str, seconds: float, claim_delay: float = 0
) -> Reply | None:
    """What a client that retries on 409 in use finally gets, within ``seconds``
    (None if the key was still in use by then)."""

    def attempt() -> Reply | None:
        reply = send(server, cookie, key, claim_delay=claim_delay)
        assert reply is not None
        if reply.status == 409:
            assert json.loads(reply.body)["error"]["type"] == "idempotency_key_in_use"
            return None
        return reply

    return poll(attempt, seconds, interval=0.2)


def pause_redis(url: str, milliseconds: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("store", "slow"), [("database", "scope"), ("redis", "scope"), ("redis", "redis-pause")]
)
def test_client_leaving_during_the_claim_never_wedges_the_key(
    servers: dict[str, Any], cookie: str, store: str, slow: str
) -> None:
    server = servers[store]
    if slow == "redis-pause":
        # The retry's claim queues behind the abandoned one's in Redis.
        pause_redis(servers["redis_url"], 800)
        gone = send(server, cookie, "claim-window", timeout=0.3)
        retry_delay = 0.0
    else:
        gone = send(server, cookie, "claim-window", timeout=0.3, claim_delay=1.0)
        # The retries claim well after the abandoned request has (at about 1 s).
        retry_delay = 2.0
    assert gone is None, "the client was meant to give up during the claim"
    # The claim is made a moment after the client left. It must not stay in
    # use: the retry gets through within one lease (on old main the renewer
    # kept a Redis claim alive for as long as the process lived).
    reply = retry_until_done(server, cookie, "claim-window", 1.0 + LEASE + 12, retry_delay)
    assert reply is not None, "the key stayed in use"
    assert reply.status == 201, reply.body
    assert Widget.objects.count() == 1


def send_and_leave(
    server: Server, cookie: str, key: str, view_delay: float, leave_when: Callable[[], bool]
) -> None:
    """POST /t/async over a connection of our own, and close it (the client
    gives up) as soon as ``leave_when()`` is true."""
    body = b'{"name": "order"}'
    host, port = urlsplit(server.base).hostname, urlsplit(server.base).port
    head = (
        f"POST /t/async HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Cookie: {cookie}\r\nIdempotency-Key: {key}\r\nX-Test-Delay: {view_delay}\r\n\r\n"
    )
    with socket.create_connection((str(host), int(port or 80)), timeout=60) as sock:
        sock.sendall(head.encode() + body)
        assert poll(leave_when, 60), "the view never started"


def view_started(store: str) -> Callable[[], bool]:
    """Whether the view of the one request in flight has started (its claim is made)."""
    if store == "redis":
        # The view's row commits at once: no transaction holds it.
        return Widget.objects.exists
    # The database store's claim holds a transaction-scoped advisory lock.

    def claimed() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return bool(cursor.fetchone()[0])

    return claimed


@pytest.mark.parametrize("store", ["database", "redis"])
def test_client_leaving_during_the_view_runs_it_once(
    servers: dict[str, Any], cookie: str, store: str
) -> None:
    server = servers[store]
    send_and_leave(server, cookie, "view-window", 2.5, view_started(store))
    reply = retry_until_done(server, cookie, "view-window", 2.5 + LEASE + 10)
    assert reply is not None, "the key stayed in use"
    assert reply.status == 201, reply.body
    assert Widget.objects.count() == 1, "the operation ran twice"
    replayed = reply.headers.get("Idempotent-Replayed") == "true"
    if store == "redis" or not CANCELS_ON_DISCONNECT:
        # The view ran to its end and its response was kept: the retry replays.
        assert replayed
    else:
        # The view was cancelled and its writes rolled back with the claim.
        assert not replayed


RACERS = 30


@pytest.mark.parametrize("store", ["database", "redis"])
def test_thirty_clients_with_one_key_run_the_view_once(
    servers: dict[str, Any], cookie: str, store: str
) -> None:
    server = servers[store]
    barrier = threading.Barrier(RACERS)
    replies: list[Reply | None] = [None] * RACERS

    def race(index: int) -> None:
        barrier.wait()
        replies[index] = send(server, cookie, "race", view_delay=0.5)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(reply is not None for reply in replies)
    done = [reply for reply in replies if reply is not None and reply.status == 201]
    originals = [reply for reply in done if "Idempotent-Replayed" not in reply.headers]
    assert len(originals) == 1
    for reply in replies:
        assert reply is not None
        if reply.status == 201:
            assert reply.body == originals[0].body
        else:
            assert reply.status == 409, reply.body
            assert json.loads(reply.body)["error"]["type"] == "idempotency_key_in_use"
            assert reply.headers["Retry-After"] == "1"
    assert Widget.objects.count() == 1
    final = retry_until_done(server, cookie, "race", LEASE + 10)
    assert final is not None and final.headers.get("Idempotent-Replayed") == "true"
    assert final.body == originals[0].body
