"""@idempotent refuses, at import time, the uses that cannot work (as DRF's
own decorators do), and names the order that works."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.views import View
from rest_framework import viewsets
from rest_framework.decorators import api_view
from rest_framework.views import APIView

from django_idempotency import idempotent


def test_a_class_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="Decorate its post"):

        @idempotent
        class Orders(APIView):
            pass


def test_twice_is_refused() -> None:
    def create(request):
        return HttpResponse()

    with pytest.raises(ImproperlyConfigured, match="applied twice to create"):
        idempotent(idempotent(create))


def test_above_api_view_is_refused_with_the_order_that_works() -> None:
    with pytest.raises(ImproperlyConfigured) as refused:

        @idempotent
        @api_view(["POST"])
        def refund(request):
            return HttpResponse()

    assert "@api_view(['POST'])\n    @idempotent\n    def refund(request)" in str(refused.value)


@pytest.mark.parametrize("view_class", [APIView, View])
def test_around_as_view_is_refused(view_class: type) -> None:
    with pytest.raises(ImproperlyConfigured, match="never around as_view"):
        idempotent(view_class.as_view())


def test_with_options_the_same_checks_apply() -> None:
    with pytest.raises(ImproperlyConfigured, match="applied twice"):
        idempotent(required=False)(idempotent(lambda request: HttpResponse()))


def test_perform_create_is_refused_naming_create() -> None:
    with pytest.raises(ImproperlyConfigured) as refused:

        class JobViewSet(viewsets.ModelViewSet):  # type: ignore[type-arg]
            @idempotent
            def perform_create(self, serializer: Any) -> None:  # pragma: no cover
                serializer.save()

    message = str(refused.value)
    assert "perform_create() gets something other than the request" in message
    assert "def create(self, request, *args, **kwargs):" in message


def test_a_method_called_without_a_request_fails_clearly_on_first_call() -> None:
    # A name that does not give it away: found on the first call, not as an
    # AttributeError on the serializer deep inside the decorator.
    class JobViewSet(viewsets.ModelViewSet):  # type: ignore[type-arg]
        @idempotent
        def save_job(self, serializer: Any) -> None:  # pragma: no cover - refused
            serializer.save()

    class JobSerializer:
        pass

    with pytest.raises(ImproperlyConfigured) as refused:
        JobViewSet().save_job(JobSerializer())
    message = str(refused.value)
    assert "a method of JobViewSet got a JobSerializer" in message
    assert "Decorate the viewset's create() instead" in message
