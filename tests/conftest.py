from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from rest_framework.test import APIClient

from tests.helpers import (
    CACHE_STORE,
    DATABASE_STORE,
    StoreUnderTest,
    delete_test_keys,
    require_redis,
)
from tests.testapp import views

# Property-based tests: a quick pass in scripts/test, many examples in scripts/soak
# (HYPOTHESIS_PROFILE=soak). Examples share one test's database, hence the check.
_slow_ok = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
hypothesis_settings.register_profile(
    "default", max_examples=30, deadline=None, suppress_health_check=_slow_ok
)
hypothesis_settings.register_profile(
    "soak", max_examples=600, deadline=None, suppress_health_check=_slow_ok
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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
    for gate in views.gates.values():
        gate.set()
    views.gates.clear()


@pytest.fixture(params=[False, True], ids=["autocommit", "atomic_requests"])
def atomic_requests(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run a test with ATOMIC_REQUESTS off and on."""
    saved = connection.settings_dict["ATOMIC_REQUESTS"]
    connection.settings_dict["ATOMIC_REQUESTS"] = request.param
    yield request.param
    connection.settings_dict["ATOMIC_REQUESTS"] = saved


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, settings: Any) -> Iterator[StoreUnderTest]:
    """Run a test on each store: the database store and, with Redis, the Redis store."""
    under_test = StoreUnderTest(request.param)
    if under_test.name == "redis":
        require_redis()
        delete_test_keys()
    settings.IDEMPOTENCY_STORE = under_test.path
    yield under_test
    if under_test.name == "redis":
        delete_test_keys()


@pytest.fixture
def database_store(settings: Any) -> None:
    """Run a test that is about the database store on it, whatever the suite runs on."""
    settings.IDEMPOTENCY_STORE = DATABASE_STORE


@pytest.fixture(autouse=True)
def _whole_suite_on_redis() -> Iterator[None]:
    """With TEST_IDEMPOTENCY_STORE set to the Redis store, every test starts clean."""
    if os.environ.get("TEST_IDEMPOTENCY_STORE") != CACHE_STORE:
        yield
        return
    require_redis()
    delete_test_keys()
    yield
    delete_test_keys()
