"""Plain Django views for bench_asgi.py: the order create as ``async def`` (guarded
and not) and as a sync view, served by uvicorn (DRF views are sync, so the
async one is a plain Django view; the sync one is too, so they differ only in
being async)."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, JsonResponse

from django_idempotency import idempotent

from .auth import user_for
from .models import Order


def bearer_scope(request: Any) -> str | None:
    """The key scope of a plain Django view: the user of ``Authorization: Bearer``."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header.startswith("Bearer "):
        return None
    return f"user:{user_for(header[len('Bearer ') :]).pk}"


def _fields(request: HttpRequest) -> dict[str, Any]:
    data = json.loads(request.body)
    return {"sku": data["sku"], "quantity": data["quantity"], "note": data.get("note", "")}


def _answer(order: Order) -> JsonResponse:
    return JsonResponse(
        {"id": order.pk, "sku": order.sku, "quantity": order.quantity, "note": order.note},
        status=201,
    )


async def async_plain(request: HttpRequest) -> JsonResponse:
    return _answer(await Order.objects.acreate(**_fields(request)))


@idempotent
async def async_guarded(request: HttpRequest) -> JsonResponse:
    return _answer(await Order.objects.acreate(**_fields(request)))


@idempotent
def sync_guarded(request: HttpRequest) -> JsonResponse:
    return _answer(Order.objects.create(**_fields(request)))
