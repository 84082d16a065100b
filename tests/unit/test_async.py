"""``async def`` views: Django's AsyncClient, and Django's own ASGI handler for concurrency.

The database store's transaction must hold the view's async ORM writes: these
tests use real commits (``transaction=True``) and check what another connection
sees, so a write that escaped the claim's transaction would show.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.core.asgi import get_asgi_application
from django.db import connection, connections
from django.test import AsyncClient, AsyncRequestFactory, Client

from django_idempotency.models import IdempotencyRecord
from tests.helpers import StoreUnderTest, poll
from tests.testapp import async_views
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db(transaction=True)

T = TypeVar("T")


@pytest.fixture
def aclient(alice: User) -> AsyncClient:
    client = AsyncClient()
    client.force_login(alice)
    return client


def apost(client: AsyncClient, path: str, data: Any = None, key: str | None = "k1") -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}

    # A coroutine function of our own: on Django 4.2 AsyncClient.post is a
    # plain function that returns a coroutine, which async_to_sync warns about.
    async def send() -> Any:
        return await client.post(
            path, json.dumps(data or {}), content_type="application/json", headers=headers
        )

    return async_to_sync(send)()


def claims() -> int:
    """Records other than the markers of released attempts (docs/requests.rst)."""
    return IdempotencyRecord.objects.exclude(state="released").count()


def elsewhere(query: Callable[[], T]) -> T:
    """Run ``query`` on another thread's connection: it sees committed rows only."""

    def run() -> T:
        try:
            return query()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def test_decorated_async_views_stay_async() -> None:
    assert iscoroutinefunction(async_views.async_widget)
    assert async_views.AsyncWidgetView.view_is_async


def test_async_view_runs_once_and_replays(aclient: AsyncClient) -> None:
    first = apost(aclient, "/t/async", {"name": "a"})
    second = apost(aclient, "/t/async", {"name": "a"})
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert first["Request-Id"].startswith("req_")
    assert elsewhere(Widget.objects.count) == 1


@pytest.mark.usefixtures("database_store")  # asserts the rollback of the view's writes
def test_finished_claim_commits_the_async_writes(aclient: AsyncClient) -> None:
    response = apost(aclient, "/t/async", {"name": "kept"})
    assert response.status_code == 201
    assert not connection.in_atomic_block, "the claim's transaction was left open"
    assert elsewhere(lambda: list(Widget.objects.values_list("name", flat=True))) == ["kept"]
    assert elsewhere(lambda: IdempotencyRecord.objects.get().state) == "completed"


@pytest.mark.usefixtures("database_store")  # asserts the rollback of the view's writes
@pytest.mark.parametrize("outcome", ["500", "422"])
def test_released_claim_rolls_back_the_async_writes(aclient: AsyncClient, outcome: str) -> None:
    response = apost(aclient, "/t/async", {"outcome": outcome})
    assert response.status_code == int(outcome)
    assert not connection.in_atomic_block
    assert elsewhere(Widget.objects.count) == 0, "the view's acreate() was not rolled back"
    assert elsewhere(claims) == 0
    # The key was released: the retry runs the view again.
    retry = apost(aclient, "/t/async", {"outcome": outcome})
    assert "Idempotent-Replayed" not in retry
    assert elsewhere(Widget.objects.count) == 0


@pytest.mark.usefixtures("database_store")  # asserts the rollback of the view's writes
def test_exception_rolls_back_and_releases(aclient: AsyncClient) -> None:
    with pytest.raises(RuntimeError, match="the async view failed"):
        apost(aclient, "/t/async", {"outcome": "raise"})
    assert not connection.in_atomic_block
    assert elsewhere(Widget.objects.count) == 0
    assert elsewhere(claims) == 0
    assert apost(aclient, "/t/async", {"outcome": "ok"}, key="k2").status_code == 201


def test_stored_4xx_replays(aclient: AsyncClient) -> None:
    first = apost(aclient, "/t/async", {"outcome": "404"})
    second = apost(aclient, "/t/async", {"outcome": "404"})
    assert first.status_code == second.status_code == 404
    assert second["Idempotent-Replayed"] == "true"
    assert elsewhere(Widget.objects.count) == 1


def test_errors_use_the_envelope(aclient: AsyncClient) -> None:
    missing = apost(aclient, "/t/async", key=None)
    assert missing.status_code == 400
    assert json.loads(missing.content)["error"]["type"] == "idempotency_key_missing"
    apost(aclient, "/t/async", {"name": "a"})
    conflict = apost(aclient, "/t/async", {"name": "b"})
    assert conflict.status_code == 409
    assert json.loads(conflict.content)["error"]["type"] == "idempotency_conflict"
    anonymous = AsyncClient()
    refused = apost(anonymous, "/t/async")
    assert refused.status_code == 403
    assert elsewhere(Widget.objects.count) == 1


def test_other_methods_and_optional_keys_pass_through(aclient: AsyncClient) -> None:
    async def get() -> Any:
        return await aclient.get("/t/async")

    assert async_to_sync(get)().status_code == 201, "GET runs the view without a key"
    assert apost(aclient, "/t/async-optional", key=None).status_code == 201
    assert apost(aclient, "/t/async-optional", key=None).status_code == 201
    assert elsewhere(claims) == 0
    assert elsewhere(Widget.objects.count) == 3
    apost(aclient, "/t/async-optional", key="opt")
    assert apost(aclient, "/t/async-optional", key="opt")["Idempotent-Replayed"] == "true"
    assert elsewhere(Widget.objects.count) == 4


def test_async_class_based_view(aclient: AsyncClient) -> None:
    first = apost(aclient, "/t/async-class")
    second = apost(aclient, "/t/async-class")
    assert first.status_code == 201
    assert second["Idempotent-Replayed"] == "true"

    async def count() -> Any:
        return await aclient.get("/t/async-class")

    counted = async_to_sync(count)()
    assert json.loads(counted.content) == {"count": 1}


def test_async_streaming_response_is_stored_and_replayed(aclient: AsyncClient) -> None:
    first = apost(aclient, "/t/async-stream")
    second = apost(aclient, "/t/async-stream")
    body = first.content if not first.streaming else b"".join(first.streaming_content)
    assert body.startswith(b"widget ") and body.endswith(b" made")
    assert second.content == body
    assert second["Idempotent-Replayed"] == "true"
    assert elsewhere(Widget.objects.count) == 1


# Concurrency through Django's ASGI handler itself: like a server, it runs each
# request in its own ThreadSensitiveContext, so each has its own sync thread
# and database connection (AsyncClient does not, so it cannot show this).

RACERS = 8


async def asgi_post(
    app: Any, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return (
        start["status"],
        {name.lower(): value for name, value in start["headers"]},
        b"".join(message.get("body", b"") for message in sent[1:]),
    )


def test_concurrent_async_requests_with_one_key_run_the_view_once(alice: User) -> None:
    login = Client()
    login.force_login(alice)
    cookie = f"{settings.SESSION_COOKIE_NAME}={login.cookies[settings.SESSION_COOKIE_NAME].value}"
    app = get_asgi_application()
    headers = {
        "Content-Type": "application/json",
        "Cookie": cookie,
        "Idempotency-Key": "race",
        "X-Test-Delay": "0.2",
    }

    async def race() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        return await asyncio.gather(
            *(asgi_post(app, "/t/async", b'{"name": "race"}', headers) for _ in range(RACERS))
        )

    # asyncio.run, not async_to_sync: under async_to_sync every request's sync
    # code would run in this one thread instead of each in its own.
    replies = asyncio.run(race())
    assert elsewhere(Widget.objects.count) == 1
    originals = [r for r in replies if r[0] == 201 and b"idempotent-replayed" not in r[1]]
    assert len(originals) == 1
    for status, reply_headers, body in replies:
        if status == 201:
            # On SQLite a duplicate waits for the database lock, then replays.
            assert body == originals[0][2]
        else:
            # On PostgreSQL a duplicate learns at once that the key is in use.
            assert status == 409
            assert json.loads(body)["error"]["type"] == "idempotency_key_in_use"
            assert reply_headers[b"retry-after"] == b"1"


# Cancellation at every step, in process: what Django 5.0+ does when a client
# disconnects (tests/integration/test_asgi_server.py shows it under five ASGI servers).


def abandon(request: Any, reached: Any, delay_header: str) -> None:
    """Run async_widget for ``request`` and cancel it once ``reached`` is set."""
    reached.clear()

    async def run() -> None:
        task = asyncio.ensure_future(async_views.async_widget(request))
        for _ in range(1000):
            if reached.is_set():
                break
            await asyncio.sleep(0.01)
        assert reached.is_set(), f"never got as far as {delay_header}"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async_to_sync(run)()


def abandoned_request(alice: User, key: str, **headers: str) -> Any:
    request = AsyncRequestFactory().post(
        "/t/async",
        b'{"name": "gone"}',
        content_type="application/json",
        headers={"Idempotency-Key": key, **headers},
    )
    request.user = alice
    return request


def test_cancelled_during_the_claim_releases_it(
    store: StoreUnderTest, alice: User, aclient: AsyncClient, settings: Any
) -> None:
    # The scope function is slow: the cancellation comes while the sync thread
    # makes the claim, and that thread goes on to claim the key.
    settings.IDEMPOTENCY_SCOPE = "tests.testapp.async_views.slow_scope"
    request = abandoned_request(alice, "claiming", **{"X-Test-Claim-Delay": "0.5"})
    abandon(request, async_views.claiming, "the claim")
    assert not connection.in_atomic_block, "the claim's transaction was left open"
    assert store.records() == [], "the claim was left behind"
    assert elsewhere(Widget.objects.count) == 0
    retry = apost(aclient, "/t/async", {"name": "gone"}, key="claiming")
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert elsewhere(Widget.objects.count) == 1


def test_cancelled_view_runs_to_its_end_and_is_replayed(
    store: StoreUnderTest, alice: User, aclient: AsyncClient
) -> None:
    # What Django 5.0+ does when the client disconnects: it cancels the view's
    # task. The view goes on to its end on every store, as a sync view does,
    # and its response is kept: the retry replays it.
    request = abandoned_request(alice, "leaving", **{"X-Test-Delay": "0.5"})
    abandon(request, async_views.started, "the view")
    assert not connection.in_atomic_block
    assert elsewhere(Widget.objects.count) == 1
    retry = apost(aclient, "/t/async", {"name": "gone"}, key="leaving")
    assert retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert elsewhere(Widget.objects.count) == 1, "the operation ran twice"


def test_view_stopped_by_shutdown_is_rolled_back_or_left_to_lapse(
    store: StoreUnderTest, alice: User, aclient: AsyncClient, settings: Any
) -> None:
    # When a server's event loop stops, asyncio.run cancels every task that is
    # left, the view's own too: the view stops halfway, whatever shields it.
    settings.IDEMPOTENCY_LEASE = 1
    request = abandoned_request(alice, "shutdown", **{"X-Test-Delay": "30"})
    async_views.started.clear()

    async def stop_mid_view() -> None:
        task = asyncio.ensure_future(async_views.async_widget(request))
        for _ in range(1000):
            if async_views.started.is_set():
                return  # and asyncio.run cancels the request, as at shutdown
            await asyncio.sleep(0.01)
        task.cancel()
        raise AssertionError("the view never started")

    # asyncio.run, not async_to_sync: it is what cancels the tasks left over.
    asyncio.run(stop_mid_view())
    # The connection of the thread that ran the request's sync code (as
    # request_finished would close it).
    asyncio.run(sync_to_async(connections.close_all)())
    if store.rolls_back_view_writes:
        # The view's writes rolled back with the claim: the retry runs it once.
        assert elsewhere(Widget.objects.count) == 0
        assert store.records() == []
        retry = apost(aclient, "/t/async", {"name": "gone"}, key="shutdown")
        assert retry.status_code == 201
        assert "Idempotent-Replayed" not in retry
        assert elsewhere(Widget.objects.count) == 1
        return
    # The Redis store cannot undo them: the claim is not released, and the key
    # stays in use until its lease lapses (renewals stopped).
    assert elsewhere(Widget.objects.count) == 1
    assert [r.state for r in store.records()] == ["in_flight"]
    refused = apost(aclient, "/t/async", {"name": "gone"}, key="shutdown")
    assert refused.status_code == 409
    assert json.loads(refused.content)["error"]["type"] == "idempotency_key_in_use"
    # Once the lease has lapsed (nothing renews it), the next retry takes the
    # key over and runs the view a second time: the documented cost of a store
    # that cannot roll back, and never at once.
    assert poll(
        lambda: apost(aclient, "/t/async", {"name": "gone"}, key="shutdown").status_code == 201,
        5,
    ), "the claim never lapsed"
    assert elsewhere(Widget.objects.count) == 2
