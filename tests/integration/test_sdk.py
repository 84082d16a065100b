"""Real clients retrying against the demo under gunicorn, through a network that loses answers.

A Stainless-generated SDK from PyPI, unmodified (``increase``: its generic
``client.post()`` pointed at the demo's base URL), and the package's own client
helper, each in two scenarios where the first attempt's answer never reaches the
client:

- the answer is lost: a loopback TCP proxy forwards the request, waits for the
  answer and then closes the client's connection without it;
- the client times out while the view still runs (the demo sleeps inside its
  transaction on ``X-Demo-Delay``), so its retry meets ``409
  idempotency_key_in_use``, which says ``X-Should-Retry: true``.

Each must end, through the client's own retries, with the original 201 (replayed)
and exactly one side effect: one job, its credits reserved once. On the database
store (PostgreSQL) and on the Redis store.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from django_idempotency.client import (
    AsyncIdempotentClient,
    IdempotentClient,
    IdempotentSession,
    RetryPolicy,
)
from tests.helpers import CACHE_STORE, on_postgresql
from tests.servers.demo import Demo, demo_on
from tests.servers.demo import scratch_database as database_on_the_server
from tests.servers.http import Server
from tests.servers.redis import redis_server

pytestmark = pytest.mark.slow

COST = 2 * 40
CREDITS = 100_000
# The view sleeps this long inside its transaction; the client gives up sooner.
VIEW_SECONDS = 3.0
CLIENT_TIMEOUT = 1.0


def job(description: str) -> dict[str, Any]:
    return {
        "type": "data_collection",
        "description": description,
        "files_needed": 2,
        "accepted_formats": ["image/jpeg"],
        "price_per_file_cents": 40,
    }


class LossyProxy:
    """A loopback TCP proxy to ``upstream``. While ``drops`` is above zero, the
    next connection's request goes through, but the answer is read from upstream
    and thrown away, and the client's connection is closed: the client never
    learns what happened. Every other byte is passed on as it comes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.drops = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                drop = self.drops > 0
                self.drops -= drop
            threading.Thread(target=self._serve, args=(client, drop), daemon=True).start()

    def _serve(self, client: socket.socket, drop: bool) -> None:
        upstream = socket.create_connection(self.upstream)
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        if not drop:
            self._pipe(upstream, client)
            return
        # The answer arrives (the view ran and committed), and is lost.
        upstream.settimeout(60)
        with suppress(OSError):
            upstream.recv(65536)
        with self._lock:
            self.dropped += 1
        for sock in (client, upstream):
            sock.close()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Api:
    demo: Demo
    server: Server
    proxy: LossyProxy
    secret: str

    def jobs(self, description: str) -> int:
        rows = self.demo.sql("SELECT count(*) FROM api_job WHERE description = %s", description)
        return int(rows[0][0])  # type: ignore[call-overload]

    def balance(self) -> int:
        return int(self.demo.sql("SELECT credits_cents FROM api_account")[0][0])  # type: ignore[call-overload]


@contextmanager
def scratch_database(suffix: str) -> Iterator[str]:
    if not on_postgresql():
        pytest.skip("runs in the PostgreSQL pass of scripts/test")
    with database_on_the_server("sdk_" + suffix) as url:
        yield url


@pytest.fixture(scope="module", params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """The demo under gunicorn (2 workers, 4 threads each) on each store (the Redis
    one on a redis-server of its own), behind a lossy proxy."""
    with ExitStack() as stack:
        demo = demo_on(stack.enter_context(scratch_database(request.param)))
        env = {}
        if request.param == "redis":
            if shutil.which("redis-server") is None:
                if os.environ.get("CI") or os.environ.get("REQUIRE_SERVICES"):
                    pytest.fail("redis-server is not installed")
                pytest.skip("needs redis-server")
            redis = stack.enter_context(redis_server())
            env = {"REDIS_URL": redis.url, "IDEMPOTENCY_STORE": CACHE_STORE}
        secret = demo.api_key("sdk", CREDITS)
        server = stack.enter_context(demo.server(workers=2, env=env))
        address = urlsplit(server.base)
        proxy = LossyProxy((address.hostname or "127.0.0.1", address.port or 80))
        stack.callback(proxy.close)
        yield Api(demo, server, proxy, secret)


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]
    replayed: bool


def with_increase(api: Api, description: str, headers: dict[str, str]) -> Outcome:
    """The SDK's generic POST, with its own keys, retries and backoff."""
    from increase import Increase

    client = Increase(
        api_key=api.secret, base_url=api.proxy.base, timeout=CLIENT_TIMEOUT, max_retries=6
    )
    with client:
        response = client.post(
            "/v1/jobs", cast_to=httpx.Response, body=job(description), options={"headers": headers}
        )
    return Outcome(
        response.status_code, response.json(), response.headers.get("Idempotent-Replayed") == "true"
    )


POLICY = RetryPolicy(max_retries=6)


def with_requests(api: Api, description: str, headers: dict[str, str]) -> Outcome:
    with IdempotentSession(retry=POLICY) as session:
        response = session.post(
            api.proxy.base + "/v1/jobs",
            json=job(description),
            headers={"Authorization": f"Bearer {api.secret}", **headers},
            timeout=CLIENT_TIMEOUT,
        )
    return Outcome(
        response.status_code, response.json(), response.headers.get("Idempotent-Replayed") == "true"
    )


def with_httpx(api: Api, description: str, headers: dict[str, str]) -> Outcome:
    with IdempotentClient(retry=POLICY, timeout=CLIENT_TIMEOUT) as client:
        response = client.post(
            api.proxy.base + "/v1/jobs",
            json=job(description),
            headers={"Authorization": f"Bearer {api.secret}", **headers},
        )
    return Outcome(
        response.status_code, response.json(), response.headers.get("Idempotent-Replayed") == "true"
    )


def with_httpx_async(api: Api, description: str, headers: dict[str, str]) -> Outcome:
    async def run() -> httpx.Response:
        async with AsyncIdempotentClient(retry=POLICY, timeout=CLIENT_TIMEOUT) as client:
            return await client.post(
                api.proxy.base + "/v1/jobs",
                json=job(description),
                headers={"Authorization": f"Bearer {api.secret}", **headers},
            )

    response = asyncio.run(run())
    return Outcome(
        response.status_code, response.json(), response.headers.get("Idempotent-Replayed") == "true"
    )


CLIENTS = {
    "increase": with_increase,
    "requests": with_requests,
    "httpx": with_httpx,
    "httpx-async": with_httpx_async,
}


def test_versions_for_the_record() -> None:
    """The real clients that these tests prove (printed with -s, for the notes)."""
    print({name: version(name) for name in ("increase", "httpx", "requests", "gunicorn")})


@pytest.mark.parametrize("name", list(CLIENTS))
def test_a_lost_answer_ends_in_the_original_response_and_one_job(api: Api, name: str) -> None:
    description = f"lost-{name}"
    before = api.balance()
    api.proxy.drops, dropped = 1, api.proxy.dropped
    outcome = CLIENTS[name](api, description, {})
    assert api.proxy.dropped == dropped + 1, "the first answer was lost"
    assert outcome.status == 201
    assert outcome.replayed, "the retry got the stored answer, not a new run"
    assert outcome.body["description"] == description
    assert api.jobs(description) == 1
    assert before - api.balance() == COST


@pytest.mark.parametrize("name", list(CLIENTS))
def test_a_timeout_while_the_view_runs_ends_in_the_original_response_and_one_job(
    api: Api, name: str
) -> None:
    description = f"slow-{name}"
    before = api.balance()
    outcome = CLIENTS[name](api, description, {"X-Demo-Delay": str(VIEW_SECONDS)})
    assert outcome.status == 201, json.dumps(outcome.body)
    assert outcome.replayed, "the first run's answer, after 409 in-use retries"
    assert outcome.body["description"] == description
    assert api.jobs(description) == 1
    assert before - api.balance() == COST


def test_the_demos_client_example_creates_a_job(api: Api) -> None:
    from testproject.client_example import create_job

    before = api.balance()
    created = create_job(api.server.base, api.secret)
    assert created["status"] == "open"
    assert api.jobs("Photo of storefront") == 1
    assert before - api.balance() == 5 * 40
