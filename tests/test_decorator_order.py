"""@idempotent refuses, at import time, the uses that cannot work (as DRF's
own decorators do), and names the order that works."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.views import View
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
