"""A URLconf of views that @idempotent cannot guard (system check W050), and of
views that look alike but are fine. Used by tests/unit/test_checks.py only."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views import View
from rest_framework import generics, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from django_idempotency import idempotent

from .models import Widget
from .views import WidgetSerializer


class JobViewSet(viewsets.ModelViewSet):  # type: ignore[type-arg]
    queryset = Widget.objects.all()
    serializer_class = WidgetSerializer

    @idempotent  # fine: POST on the collection
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)

    @idempotent  # W050: GET
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @idempotent  # W050: PUT
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().update(request, *args, **kwargs)

    @idempotent  # W050: an action for GET
    @action(detail=True, methods=["get"])
    def report(self, request: Request, pk: str | None = None) -> Response:
        return Response({})

    @idempotent  # fine: an action for POST
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        return Response({})

    @idempotent  # fine: a helper that a POST handler may call, named by no route
    def charge(self, request: Request) -> None:
        pass


class StatusView(APIView):
    @idempotent  # W050: GET
    def get(self, request: Request) -> Response:
        return Response({})


class PlainStatusView(View):
    @idempotent  # W050: GET of a plain Django class-based view
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse()


class JobCreateView(generics.CreateAPIView):  # type: ignore[type-arg]
    queryset = Widget.objects.all()
    serializer_class = WidgetSerializer

    @idempotent  # fine: CreateAPIView.post() calls create()
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)


@api_view(["GET"])
@idempotent  # W050: GET only
def read_only(request: Request) -> Response:
    return Response({})


@api_view(["GET", "POST"])
@idempotent  # fine: also POST
def read_write(request: Request) -> Response:
    return Response({})


router = SimpleRouter()
router.register("jobs", JobViewSet, basename="job")

urlpatterns = [
    path("status", StatusView.as_view()),
    path("plain-status", PlainStatusView.as_view()),
    path("create", JobCreateView.as_view()),
    path("read-only", read_only),
    path("read-write", read_write),
    *router.urls,
]
