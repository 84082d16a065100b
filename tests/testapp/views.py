"""Views decorated in every supported way, for the contract tests.

Each run of a view body creates one Widget row, so tests count runs by counting rows.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency import idempotent

from .models import Widget

# A test may clear `hold` to make views wait inside their claim while others
# race; `started` is set once a view body is running.
hold = threading.Event()
hold.set()
started = threading.Event()
# A request with the header ``X-Test-Gate: <name>`` also waits for gates[name],
# so a test can hold one request while others run past it.
gates: dict[str, threading.Event] = {}


class WidgetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Widget
        fields = ["id", "name", "owner"]


def _make(request: Any, name: str | None = None) -> Widget:
    delay = float(request.META.get("HTTP_X_TEST_DELAY", "0"))
    widget = Widget.objects.create(
        name=name if name is not None else request.data.get("name", ""),
        owner=getattr(request.user, "username", ""),
    )
    mark = request.META.get("HTTP_X_TEST_MARK")
    if mark:
        # Lets a test in another process see that the view body is running.
        Path(mark).touch()
    started.set()
    if delay:
        time.sleep(delay)
    hold.wait(10)
    gate = gates.get(request.META.get("HTTP_X_TEST_GATE", ""))
    if gate is not None:
        gate.wait(10)
    return widget


class WidgetViewSet(viewsets.ModelViewSet):
    serializer_class = WidgetSerializer
    queryset = Widget.objects.all()

    @idempotent
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        widget = _make(request, serializer.validated_data["name"])
        return Response(
            {"id": widget.pk, "name": widget.name, "key": request.idempotency_key},  # type: ignore[attr-defined]
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/t/widgets/{widget.pk}", "X-Widget": "made"},
        )

    @idempotent
    @action(detail=True, methods=["post"])
    def rename(self, request: Request, pk: str | None = None) -> Response:
        widget = self.get_object()
        widget.name = request.data.get("name", "")
        widget.save()
        Widget.objects.create(name="rename-run")
        return Response({"id": widget.pk, "name": widget.name})

    @action(detail=True, methods=["post"])
    @idempotent
    def touch(self, request: Request, pk: str | None = None) -> Response:
        Widget.objects.create(name="touch-run")
        return Response({"touched": pk})


class WidgetAPIView(APIView):
    @idempotent(required=False)
    def post(self, request: Request) -> Response:
        widget = _make(request)
        outcome = request.data.get("outcome", "ok")
        if outcome == "read_again":
            # Uses the database again after _make's wait: its connection may
            # have died meanwhile.
            Widget.objects.get(pk=widget.pk)
        if outcome == "raise":
            raise RuntimeError("the view failed")
        if outcome == "invalid":
            raise serializers.ValidationError({"name": ["bad"]})
        if outcome == "rollback":
            # A view that answers 201 but leaves its transaction to roll back,
            # as when the commit itself fails.
            transaction.set_rollback(True)
            return Response({"id": widget.pk, "outcome": outcome}, status=201)
        codes = {
            "ok": 201,
            "read_again": 201,
            "500": 500,
            "503": 503,
            "400": 400,
            "422": 422,
            "404": 404,
            "409": 409,
        }
        response = Response({"id": widget.pk, "outcome": outcome}, status=codes[outcome])
        response.set_cookie("session-ish", "secret")
        return response


@api_view(["POST", "GET"])
@idempotent
def widget_function(request: Request) -> Response:
    if request.method == "GET":
        return Response({"count": Widget.objects.count()})
    widget = _make(request)
    return Response({"id": widget.pk}, status=201)


@csrf_exempt
@idempotent
def plain_view(request: HttpRequest) -> HttpResponse:
    widget = Widget.objects.create(name="plain")
    if request.META.get("CONTENT_TYPE", "").startswith("application/octet-stream"):
        # Echo bytes that are not UTF-8, to prove bodies replay byte-exact.
        return HttpResponse(
            bytes(range(256)) + request.body, content_type="application/octet-stream"
        )
    return JsonResponse({"id": widget.pk}, status=201)


def tenant_scope(request: Any) -> str | None:
    """A scope taken as sent (``X-Tenant``), for servers that tests start with
    ``TEST_IDEMPOTENCY_SCOPE=tests.testapp.views.tenant_scope``."""
    value: str | None = request.META.get("HTTP_X_TENANT")
    return value
