"""Configuration errors are answered as such: ``500 idempotency_misconfigured``
with ``X-Should-Retry: false`` and no ``Retry-After`` (a client that retried
would retry forever), and a log line that names the fix. Outages stay ``503``
with ``X-Should-Retry: true`` (tests/unit/test_errors.py).

Each cause is made for real: the app taken out of INSTALLED_APPS, a cache that
gives no raw Redis client. The records' table renamed away is
tests/unit/test_unstorable.py's; the Redis Cluster behind a plain client is
tests/integration/test_redis_ha.py's (it needs a cluster).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.urls import get_resolver
from rest_framework.test import APIClient

from django_idempotency import idempotent
from tests.helpers import post
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db

# A viewset's create (DRF) and a plain Django view: the two ways the decorator answers.
PATHS = ["/t/widgets", "/t/plain"]


@pytest.fixture
def client_alice(client_alice: APIClient, alice: Any) -> APIClient:
    client_alice.force_login(alice)  # for the plain view
    return client_alice


def assert_misconfigured(response: Any) -> None:
    assert response.status_code == 500, response.content
    body = json.loads(response.content)
    assert body["error"]["type"] == "idempotency_misconfigured"
    assert body["error"]["request_id"] == response["Request-Id"]
    assert response["X-Should-Retry"] == "false"
    assert "Retry-After" not in response


@pytest.fixture
def without_the_app() -> Iterator[None]:
    get_resolver().url_patterns  # noqa: B018  the views, decorated with the app there
    apps = [app for app in django_settings.INSTALLED_APPS if app != "django_idempotency"]
    with override_settings(INSTALLED_APPS=apps):
        yield


@pytest.mark.usefixtures("without_the_app")
@pytest.mark.parametrize("path", PATHS)
def test_the_app_missing_from_installed_apps_is_a_configuration_error(
    client_alice: APIClient, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    # The views were decorated before (with the app there): the request finds it out.
    with caplog.at_level(logging.ERROR, logger="django_idempotency"):
        response = post(client_alice, path, {"name": "a"})
    assert_misconfigured(response)
    assert 'add "django_idempotency" to INSTALLED_APPS' in caplog.text
    assert Widget.objects.count() == 0


@pytest.mark.usefixtures("without_the_app")
def test_the_app_missing_is_refused_where_the_decorator_is_applied() -> None:
    with pytest.raises(ImproperlyConfigured, match='add "django_idempotency" to INSTALLED_APPS'):

        @idempotent
        def view(request: Any) -> Any:  # pragma: no cover - never defined
            raise AssertionError


def test_a_cache_without_a_raw_redis_client_is_a_configuration_error(
    client_alice: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("django_redis")
    with (
        override_settings(
            IDEMPOTENCY_STORE="django_idempotency.stores.redis.RedisStore",
            IDEMPOTENCY_CACHE="idem",
            CACHES={
                **django_settings.CACHES,
                "idem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            },
            # As a project that silenced it would: the check catches it otherwise.
            SILENCED_SYSTEM_CHECKS=["django_idempotency.E012"],
        ),
        caplog.at_level(logging.ERROR, logger="django_idempotency"),
    ):
        response = post(client_alice, "/t/widgets", {"name": "a"})
    assert_misconfigured(response)
    assert "gives no raw redis-py client" in caplog.text


def test_a_bad_setting_at_request_time_is_a_500_that_says_do_not_retry(
    alice: Any,
) -> None:
    # A setting changed after start-up (ready() refuses bad ones at start):
    # ImproperlyConfigured, answered by the package's handler500.
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(alice)
    with override_settings(IDEMPOTENCY_TTL=10**12):
        response = post(client, "/t/widgets", {"name": "a"})
    assert response.status_code == 500
    assert json.loads(response.content)["error"]["type"] == "api_error"
    assert response["X-Should-Retry"] == "false"
    assert "Retry-After" not in response
