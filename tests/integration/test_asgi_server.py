"""Async views under every common ASGI server: clients that give up waiting, races,
and a server stopped while a view runs.

The servers (tests/servers/http.py, ASGI_SERVERS): uvicorn, gunicorn with uvicorn's
workers, Hypercorn, Daphne and Granian, each on the database store (in both
passes of scripts/test: SQLite, then PostgreSQL) and, in the PostgreSQL pass,
on the Redis store. What every one of them must show:

* A client whose timeout is shorter than the view, retrying, gets the view's
  answer replayed: the view runs to its end when its client leaves, on every
  store (as under WSGI), and runs once.
* A client that leaves while the key is being claimed never wedges the key.
* Thirty clients at once with one key run the view once.
* SIGTERM while a view runs never lets the retry run it again at once. With a
  server's default limits the view finishes, its client gets the answer, and
  the retry replays it (Daphne has no graceful limit: it cancels the request,
  and the view may or may not end). With a limit shorter than the view, a view
  that is stopped halfway is rolled back with its claim on the database store,
  and the retry runs it once; the Redis store, which cannot undo the view's
  writes, leaves the claim to lapse: the retry gets 409 in use until the lease
  ends, and then runs the view again (docs/async.rst says so).

Leases and views are short (IDEMPOTENCY_LEASE 1 s, views of 1.5 to 2 s) so the
whole matrix stays small; the Redis is one of our own, on a free port: CLIENT
PAUSE would stall every other user of the shared one.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from tests.helpers import CACHE_STORE, DATABASE_STORE, on_postgresql, poll
from tests.servers.http import ASGI_SERVERS, Reply, Server, asgi
from tests.servers.redis import redis_server
from tests.testapp.models import Widget

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LEASE = 1.0  # seconds: the Redis store's lease on these servers
VIEW = 1.5  # seconds: how long a view runs, unless a test needs it longer
# The Redis store in the PostgreSQL pass only: it does not depend on the database.
STORES = ("database", "redis") if on_postgresql() else ("database",)
# All five unless TEST_ASGI_SERVERS names some (noxfile.py's version sessions
# run uvicorn only: scripts/test runs them all).
SERVERS = os.environ.get("TEST_ASGI_SERVERS", ",".join(ASGI_SERVERS)).split(",")
assert set(SERVERS) <= set(ASGI_SERVERS), f"TEST_ASGI_SERVERS: not in {ASGI_SERVERS}"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if "redis" not in STORES:
        yield ""
        return
    pytest.importorskip("django_redis")
    with redis_server() as redis:
        yield redis.url


@pytest.fixture(scope="module")
def view_starts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file where the view notes each start (tests/testapp/async_views.py)."""
    return tmp_path_factory.mktemp("asgi") / "starts"


def server_env(store: str, redis_url: str, view_starts: Path) -> dict[str, str]:
    env = {
        "TEST_IDEMPOTENCY_LEASE": str(LEASE),
        "TEST_IDEMPOTENCY_SCOPE": "tests.testapp.async_views.slow_scope",
        "TEST_VIEW_STARTS": str(view_starts),
    }
    if store == "redis":
        return {**env, "TEST_IDEMPOTENCY_STORE": CACHE_STORE, "REDIS_URL": redis_url}
    return {**env, "TEST_IDEMPOTENCY_STORE": DATABASE_STORE}


@dataclass
class Served:
    name: str  # of the server
    store: str
    server: Server

    def key(self, name: str) -> str:
        """An Idempotency-Key of this server and store only: the Redis of the
        Redis store is not emptied between tests."""
        return f"{name}-{self.name}-{self.store}"


@pytest.fixture(
    scope="module",
    params=[(name, store) for name in SERVERS for store in STORES],
    ids=lambda param: "-".join(param),
)
def served(
    request: pytest.FixtureRequest,
    django_db_setup: None,
    django_db_blocker: Any,
    redis_url: str,
    view_starts: Path,
) -> Iterator[Served]:
    """A server of the test app, one process (ASGI serves requests concurrently)."""
    name, store = request.param
    with (
        django_db_blocker.unblock(),
        asgi(name, server_env(store, redis_url, view_starts)) as server,
    ):
        yield Served(name, store, server)


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
    """POST /t/async once; None if the client gave up waiting (timed out) or
    the server closed the connection without an answer. The view makes a
    Widget named ``key`` (see runs())."""
    headers = {"Cookie": cookie, "Idempotency-Key": key}
    if claim_delay:
        headers["X-Test-Claim-Delay"] = str(claim_delay)
    if view_delay:
        headers["X-Test-Delay"] = str(view_delay)
    try:
        body = json.dumps({"name": key}).encode()
        return server.request("/t/async", body, headers=headers, timeout=timeout)
    except (TimeoutError, ConnectionError):
        return None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, ConnectionError)):
            return None
        raise


def in_use(reply: Reply | None) -> bool:
    """Whether ``reply`` is the 409 that tells a client to retry the key later."""
    if reply is None or reply.status != 409:
        return False
    assert json.loads(reply.body)["error"]["type"] == "idempotency_key_in_use"
    assert header(reply, "Retry-After") == "1"
    return True


def header(reply: Reply, name: str) -> str | None:
    """A header of ``reply`` by its name in any case (Granian sends them in lower case)."""
    return {key.lower(): value for key, value in reply.headers.items()}.get(name.lower())


def retry_until_done(
    server: Server, cookie: str, key: str, seconds: float, claim_delay: float = 0
) -> Reply | None:
    """What a client that retries on 409 in use finally gets, within ``seconds``
    (None if the key was still in use by then)."""

    def attempt() -> Reply | None:
        reply = send(server, cookie, key, claim_delay=claim_delay)
        assert reply is not None
        return None if in_use(reply) else reply

    return poll(attempt, seconds, interval=0.2)


def runs(key: str) -> int:
    """How many times the view ran for ``key`` and its writes stayed. By key,
    not all rows: a request that an earlier test left waiting for its claim
    (SQLite queues it) may still run after that test's data was flushed."""
    return Widget.objects.filter(name=key).count()


def replayed(reply: Reply) -> bool:
    return header(reply, "Idempotent-Replayed") == "true"


def test_a_client_whose_timeout_is_shorter_than_the_view_gets_its_answer(
    served: Served, cookie: str
) -> None:
    # An SDK with a fixed timeout shorter than the view retries the same key:
    # each attempt times out, or is told the key is in use, until the view
    # that the first attempt started has finished; then it gets the answer.
    server, key = served.server, served.key("impatient")

    def attempt() -> Reply | None:
        reply = send(server, cookie, key, timeout=0.5, view_delay=VIEW)
        return None if reply is None or in_use(reply) else reply

    reply = poll(attempt, VIEW + 20, interval=0.1)
    assert reply is not None, "no attempt ever got an answer"
    assert reply.status == 201, reply.body
    assert replayed(reply), "the view was not kept running when its client left"
    assert runs(key) == 1, "the view ran more than once"


@pytest.mark.parametrize("slow", ["scope", "redis-pause"])
def test_client_leaving_during_the_claim_never_wedges_the_key(
    served: Served, redis_url: str, cookie: str, slow: str
) -> None:
    server, key = served.server, served.key(f"claim-{slow}")
    if slow == "redis-pause":
        if served.store != "redis":
            pytest.skip("pauses the Redis of the Redis store")
        # The retry's claim queues behind the abandoned one's in Redis.
        pause_redis(redis_url, 800)
        gone = send(server, cookie, key, timeout=0.3)
        retry_delay = 0.0
    else:
        gone = send(server, cookie, key, timeout=0.3, claim_delay=1.0)
        # The retries claim well after the abandoned request has (at about 1 s).
        retry_delay = 2.0
    assert gone is None, "the client was meant to give up during the claim"
    # The claim is made a moment after the client left. It must not stay in
    # use: the retry gets through within one lease.
    reply = retry_until_done(server, cookie, key, 1.0 + LEASE + 12, retry_delay)
    assert reply is not None, "the key stayed in use"
    assert reply.status == 201, reply.body
    assert runs(key) == 1


def pause_redis(url: str, milliseconds: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")
    finally:
        client.close()


RACERS = 30


def test_thirty_clients_with_one_key_run_the_view_once(served: Served, cookie: str) -> None:
    server, key = served.server, served.key("race")
    barrier = threading.Barrier(RACERS)
    replies: list[Reply | None] = [None] * RACERS

    def race(index: int) -> None:
        barrier.wait()
        replies[index] = send(server, cookie, key, view_delay=0.5)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(reply is not None for reply in replies)
    done = [reply for reply in replies if reply is not None and reply.status == 201]
    originals = [reply for reply in done if not replayed(reply)]
    assert len(originals) == 1
    for reply in replies:
        assert reply is not None
        # A duplicate learns that the key is in use (on SQLite it may wait for
        # the database lock instead, and replay).
        assert reply.status == 201 or in_use(reply), reply.body
        if reply.status == 201:
            assert reply.body == originals[0].body
    assert runs(key) == 1
    final = retry_until_done(server, cookie, key, LEASE + 10)
    assert final is not None and replayed(final)
    assert final.body == originals[0].body


# SIGTERM while a view runs. "default": the server's own limits; "short": a
# graceful limit shorter than the view (Daphne has none to set).
SHORT_LIMIT = 1.0
LONG_VIEW = 2.0  # longer than SHORT_LIMIT, shorter than every default limit
# The servers that, by default, let a request in flight at SIGTERM finish (for
# as long as it takes, or Hypercorn's 3 s). Daphne cancels it at once.
DRAINS_BY_DEFAULT = ("uvicorn", "gunicorn", "hypercorn", "granian")
# The servers that stop the view once the short limit is over: uvicorn cancels
# the request and exits at once (it raises the SIGTERM again), gunicorn and
# Granian kill the worker. Hypercorn closes the connection but lets the view end.
STOP_AT_THE_LIMIT = ("uvicorn", "gunicorn", "granian")


@pytest.mark.parametrize("limit", ["default", "short"])
def test_sigterm_during_the_view_never_runs_it_again_at_once(
    served: Served,
    redis_url: str,
    view_starts: Path,
    cookie: str,
    limit: str,
) -> None:
    name, store, other = served.name, served.store, served.server
    if limit == "short" and name == "daphne":
        pytest.skip("Daphne has no graceful limit: its default is the short case")
    key = served.key(f"sigterm-{limit}")
    env = server_env(store, redis_url, view_starts)
    graceful = SHORT_LIMIT if limit == "short" else None
    first: list[Reply | None] = []
    with asgi(name, env, graceful=graceful) as dying:
        client = threading.Thread(
            target=lambda: first.append(send(dying, cookie, key, view_delay=LONG_VIEW, timeout=30))
        )
        client.start()
        assert poll(lambda: key in read_starts(view_starts), 30), "the view never started"
        dying.process.send_signal(signal.SIGTERM)
        dying.process.wait(30)
        client.join()
    if limit == "default" and name in DRAINS_BY_DEFAULT:
        # The server let the view finish: its client got the answer.
        assert first[0] is not None and first[0].status == 201, first
    # The retry, at once, on another server of the same store.
    retry = send(other, cookie, key)
    assert retry is not None
    if limit == "short" and name in STOP_AT_THE_LIMIT:
        assert not replayed(retry), "the view was meant to be stopped halfway"
    if retry.status == 201 and replayed(retry):
        # The view finished before the server went, and its response was kept.
        assert runs(key) == 1
    elif store == "database":
        # Stopped halfway, the view's writes rolled back with its claim (the
        # transaction aborts when the server's connection goes): the retry
        # runs it, for the first time that counts.
        if in_use(retry):  # the dead server's connection was still closing
            retry = retry_until_done(other, cookie, key, 10)
        assert retry is not None and retry.status == 201 and not replayed(retry), retry
        assert runs(key) == 1
    else:
        # The Redis store cannot undo the view's writes: its claim lapses with
        # its lease, and only then may the retry run the view again.
        assert in_use(retry), f"the retry ran the view again at once: {retry}"
        assert runs(key) == 1
        later = retry_until_done(other, cookie, key, LEASE + 10)
        assert later is not None and later.status == 201 and not replayed(later), later
        # The second run that docs/async.rst names for a view stopped halfway.
        assert runs(key) == 2


def read_starts(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
