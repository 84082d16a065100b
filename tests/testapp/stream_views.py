"""Streaming responses under @idempotent (tests/unit/test_streaming.py).

Each view records what a test must check after the response went out: the
file it opened, whether its iterator was closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import FileResponse, HttpRequest, StreamingHttpResponse

from django_idempotency import idempotent

from .models import Widget

#: The files that download() opened, and the iterators that finished.
opened: list[Any] = []
finished: list[str] = []


@idempotent
def download(request: HttpRequest) -> FileResponse:
    Widget.objects.create(name="download")
    handle = open(request.headers["X-Test-File"], "rb")  # noqa: SIM115 (FileResponse closes it)
    opened.append(handle)
    response = FileResponse(handle, status=201, content_type="text/plain")
    response.set_cookie("download", "1")
    return response


@idempotent
def sync_stream(request: HttpRequest) -> StreamingHttpResponse:
    Widget.objects.create(name="sync-stream")

    def chunks() -> Iterator[bytes]:
        try:
            yield b"sync "
            yield b"chunks"
        finally:
            finished.append("sync")

    response = StreamingHttpResponse(chunks(), status=201, content_type="text/plain")
    response.set_cookie("stream", "sync")
    return response


@idempotent
async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    await Widget.objects.acreate(name="async-stream")

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"async "
            yield b"chunks"
        finally:
            finished.append("async")

    response = StreamingHttpResponse(chunks(), status=201, content_type="text/plain")
    response.set_cookie("stream", "async")
    return response
