"""Streaming responses: the first answer keeps its cookies, and the original
response is closed (its closers run), for FileResponse and async iterators."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.test import AsyncClient, Client

from tests.testapp import stream_views
from tests.testapp.models import Widget


@pytest.fixture(autouse=True)
def _clean() -> Any:
    stream_views.opened.clear()
    stream_views.finished.clear()
    yield
    for handle in stream_views.opened:
        handle.close()
    stream_views.opened.clear()


@pytest.fixture
def logged_in(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def test_a_file_response_keeps_its_cookie_and_its_file_is_closed(
    logged_in: Client, tmp_path: Path
) -> None:
    client = logged_in
    path = tmp_path / "report.txt"
    path.write_bytes(b"the report")
    # Other tests' garbage (sockets, pipes) may warn when collected: collect
    # it first, and count only warnings about this test's file.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        first = client.post("/t/download", HTTP_IDEMPOTENCY_KEY="dl", HTTP_X_TEST_FILE=str(path))
        assert first.status_code == 201
        assert first.content == b"the report"
        (handle,) = stream_views.opened
        assert handle.closed, "the FileResponse's file was closed"
        assert first.cookies["download"].value == "1"
        del handle
        stream_views.opened.clear()
        gc.collect()
    unclosed = [
        w for w in caught if issubclass(w.category, ResourceWarning) and str(path) in str(w.message)
    ]
    assert not unclosed, [str(w.message) for w in unclosed]

    replay = client.post("/t/download", HTTP_IDEMPOTENCY_KEY="dl", HTTP_X_TEST_FILE=str(path))
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == b"the report"
    assert "download" not in replay.cookies  # cookies belong to one exchange
    assert Widget.objects.count() == 1


def test_a_sync_stream_keeps_its_cookie_and_its_iterator_is_closed(logged_in: Client) -> None:
    client = logged_in
    first = client.post("/t/sync-stream", HTTP_IDEMPOTENCY_KEY="s")
    assert first.status_code == 201
    assert first.content == b"sync chunks"
    assert stream_views.finished == ["sync"], "the iterator was closed"
    assert first.cookies["stream"].value == "sync"
    replay = client.post("/t/sync-stream", HTTP_IDEMPOTENCY_KEY="s")
    assert replay.content == b"sync chunks"
    assert replay["Idempotent-Replayed"] == "true"


@pytest.mark.django_db(transaction=True)
def test_an_async_stream_keeps_its_cookie_and_is_read_to_its_end(alice: User) -> None:
    client = AsyncClient()
    client.force_login(alice)

    async def send() -> Any:
        return await client.post("/t/async-stream-cookie", headers={"Idempotency-Key": "a"})

    first = async_to_sync(send)()
    assert first.status_code == 201
    assert first.content == b"async chunks"
    assert first.cookies["stream"].value == "async"
    assert stream_views.finished == ["async"]
    replay = async_to_sync(send)()
    assert replay.content == b"async chunks"
    assert replay["Idempotent-Replayed"] == "true"
    assert "stream" not in replay.cookies
