"""The Redis store when Redis goes away: a redis-server of the test's own is
killed and started again (empty: no persistence). Requests that cannot claim
fail closed with 503 (or run unguarded with IDEMPOTENCY_FAIL_OPEN); a view
already running keeps its response, which is stored once Redis is back."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("django_redis")

from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.helpers import CACHE_STORE, envelope, poll, post, post_as, redis_client
from tests.servers.redis import Node, redis_server
from tests.testapp import views
from tests.testapp.models import Widget

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def own_redis(settings: Any) -> Iterator[Node]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with redis_server() as server:
        settings.CACHES = {
            **settings.CACHES,
            "redis": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": server.url,
                "KEY_PREFIX": os.environ["REDIS_TEST_PREFIX"],
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
            },
        }
        settings.IDEMPOTENCY_STORE = CACHE_STORE
        yield server


def test_redis_down_fails_closed_with_503_and_recovers(
    own_redis: Node, client_alice: APIClient, settings: Any
) -> None:
    assert post(client_alice, "/t/widgets", {"name": "a"}, key="before").status_code == 201
    own_redis.kill()
    for key in ("new", "before"):
        response = post(client_alice, "/t/widgets", {"name": "a"}, key=key)
        assert response.status_code == 503
        assert envelope(response)["type"] == "idempotency_store_unavailable"
    assert Widget.objects.count() == 1, "the view did not run"
    own_redis.start()
    assert post(client_alice, "/t/widgets", {"name": "a"}, key="after").status_code == 201
    replay = post(client_alice, "/t/widgets", {"name": "a"}, key="after")
    assert replay["Idempotent-Replayed"] == "true"


def test_redis_down_with_fail_open_runs_the_view_unguarded(
    own_redis: Node, client_alice: APIClient, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.IDEMPOTENCY_FAIL_OPEN = True
    own_redis.kill()
    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        first = post(client_alice, "/t/widgets", {"name": "a"}, key="open")
        second = post(client_alice, "/t/widgets", {"name": "a"}, key="open")
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert Widget.objects.count() == 2
    assert "IDEMPOTENCY_FAIL_OPEN" in caplog.text


def test_redis_stopped_while_the_view_runs_sends_the_view_response_and_stores_it_later(
    own_redis: Node, client_alice: APIClient, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    views.hold.clear()
    views.started.clear()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post_as, alice, "/t/widgets", {"name": "mid"}, "mid")
        assert views.started.wait(10)
        own_redis.kill()
        views.hold.set()
        response = running.result(30)
    assert response.status_code == 201, "the view ran: its response goes out, never a 500"
    assert "Could not store the response" in caplog.text
    assert "retrying in the background" in caplog.text
    own_redis.start()
    # The restarted Redis is empty (no persistence here). The completion is
    # retried in the background until it is stored, so the retry of the
    # request is a replay, not a second run.
    stored = poll(
        lambda: [n for n in redis_client().scan_iter(match=os.environ["REDIS_TEST_PREFIX"] + ":*")],
        30,
    )
    assert stored, "the completion was never retried"
    replay = post(client_alice, "/t/widgets", {"name": "mid"}, key="mid")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == response.content
    assert Widget.objects.count() == 1, "the view ran once"
