"""``async def`` views under @idempotent: plain Django, as DRF views are sync.

(No csrf_exempt: the test settings have no CSRF middleware, and before Django 5.0
csrf_exempt turns an async view into a sync one.)

Each run creates one Widget row with the async ORM, so tests count runs and see
whether the row was rolled back with a released claim.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views import View

from django_idempotency import idempotent
from django_idempotency.keys import user_scope

from .models import Widget

# Set once a view body has made its row, so a test can act while it runs.
started = threading.Event()
# Set once slow_scope has been asked for a scope, so a test can act while the
# claim is being made.
claiming = threading.Event()


def slow_scope(request: Any) -> str | None:
    """The default scope, after the pause that ``X-Test-Claim-Delay`` asks for:
    a slow claim (as a scope function that queries a slow service makes it)."""
    claiming.set()
    time.sleep(float(request.headers.get("X-Test-Claim-Delay", "0")))
    return user_scope(request)


@idempotent
async def async_widget(request: HttpRequest) -> HttpResponse:
    data = json.loads(request.body or b"{}")
    widget = await Widget.objects.acreate(name=data.get("name", "async"))
    started.set()
    if "TEST_VIEW_STARTS" in os.environ:
        # For tests that stop the server while the view runs (test_asgi_server.py).
        with open(os.environ["TEST_VIEW_STARTS"], "a") as starts:
            starts.write(request.headers.get("Idempotency-Key", "") + "\n")
    delay = float(request.headers.get("X-Test-Delay", "0"))
    if delay:
        # Keeps the claim's transaction open while concurrent requests arrive.
        await asyncio.sleep(delay)
    outcome = data.get("outcome", "ok")
    if outcome == "raise":
        raise RuntimeError("the async view failed")
    if outcome == "read_again":
        # The database again after the delay: its connection may have died.
        await Widget.objects.aget(pk=widget.pk)
    status = {"ok": 201, "read_again": 201, "500": 500, "422": 422, "404": 404}[outcome]
    return JsonResponse({"id": widget.pk, "outcome": outcome}, status=status)


@idempotent
async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    widget = await Widget.objects.acreate(name="stream")

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"widget ", str(widget.pk).encode(), b" made"):
            yield part

    return StreamingHttpResponse(chunks(), status=201, content_type="text/plain")


@idempotent(required=False)
async def async_optional(request: HttpRequest) -> HttpResponse:
    widget = await Widget.objects.acreate(name="optional")
    return JsonResponse({"id": widget.pk}, status=201)


class AsyncWidgetView(View):
    @idempotent
    async def post(self, request: HttpRequest) -> HttpResponse:
        widget = await Widget.objects.acreate(name="class")
        return JsonResponse({"id": widget.pk}, status=201)

    async def get(self, request: HttpRequest) -> HttpResponse:
        return JsonResponse({"count": await Widget.objects.acount()})
