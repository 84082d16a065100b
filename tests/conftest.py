from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.db import connection
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient

from tests.testapp import views

# Property-based tests: a quick pass in scripts/test, many examples in scripts/soak
# (HYPOTHESIS_PROFILE=soak). Examples share one test's database, hence the check.
_slow_ok = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("default", max_examples=30, deadline=None, suppress_health_check=_slow_ok)
settings.register_profile("soak", max_examples=600, deadline=None, suppress_health_check=_slow_ok)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_report_header() -> str:
    return "database: " + os.environ.get("DATABASE_URL", "sqlite (default)")


@pytest.fixture
def alice(db: None) -> User:
    return User.objects.create_user("alice", password="alice-pw")


@pytest.fixture
def bob(db: None) -> User:
    return User.objects.create_user("bob", password="bob-pw")


@pytest.fixture
def client_alice(alice: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(alice)
    return client


@pytest.fixture
def client_bob(bob: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(bob)
    return client


@pytest.fixture(autouse=True)
def _open_hold() -> Iterator[None]:
    views.hold.set()
    yield
    views.hold.set()


@pytest.fixture(params=[False, True], ids=["autocommit", "atomic_requests"])
def atomic_requests(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run a test with ATOMIC_REQUESTS off and on."""
    saved = connection.settings_dict["ATOMIC_REQUESTS"]
    connection.settings_dict["ATOMIC_REQUESTS"] = request.param
    yield request.param
    connection.settings_dict["ATOMIC_REQUESTS"] = saved


def post(client: APIClient, path: str, data: object = None, key: str | None = "k1", **extra: str):
    headers = dict(extra)
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return client.post(path, data if data is not None else {}, format="json", **headers)
