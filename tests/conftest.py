from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from importlib.util import find_spec
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord
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


def poll(condition: Callable[[], Any], seconds: float, interval: float = 0.05) -> Any:
    """``condition()``'s first truthy value, asked every ``interval`` seconds for up
    to ``seconds``; its last (falsy) value if it never came."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)
    return value


def post(client: APIClient, path: str, data: object = None, key: str | None = "k1", **extra: str):
    headers = dict(extra)
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return client.post(path, data if data is not None else {}, format="json", **headers)


def make_record(
    key: str = "k",
    *,
    scope: str = "user:1",
    state: str = "completed",
    age: timedelta = timedelta(hours=1),
    expires_in: timedelta = timedelta(hours=23),
    status: int | None = 201,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = b'{"id": 1}',
    method: str = "POST",
    path: str = "/t/widgets",
    fingerprint: str = "f" * 64,
):
    """One stored IdempotencyRecord, created ``age`` ago, expiring ``expires_in`` from now."""
    from django_idempotency.models import IdempotencyRecord

    now = timezone.now()
    return IdempotencyRecord.objects.create(
        scope=scope,
        key=key,
        fingerprint=fingerprint,
        method=method,
        path=path,
        state=state,
        response_status=status if state == "completed" else None,
        response_headers=json.dumps(
            [["Content-Type", "application/json"]] if headers is None else headers
        ),
        response_body=body if state == "completed" else None,
        created_at=now - age,
        expires_at=now + expires_in,
    )


def staff(*perms: str) -> Client:
    """A logged-in test client of a staff user with these permissions on
    idempotency records ("view", "delete", ...)."""
    user = User.objects.create_user("staff-" + "-".join(perms), password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=[f"{p}_idempotencyrecord" for p in perms])
    )
    client = Client()
    client.force_login(user)
    return client


DATABASE_STORE = "django_idempotency.stores.database.DatabaseStore"
CACHE_STORE = "django_idempotency.stores.redis.RedisStore"


@dataclass
class Rec:
    """A stored record as any store keeps it, for tests to inspect."""

    scope: str
    key: str
    state: str
    status: int | None
    headers: list[tuple[str, str]]
    body: bytes | None
    ttl: timedelta  # how long the record is kept in all


@dataclass
class StoreUnderTest:
    """The store a test runs on, and store-neutral ways to look into it."""

    name: str

    @property
    def path(self) -> str:
        return CACHE_STORE if self.name == "redis" else DATABASE_STORE

    @property
    def rolls_back_view_writes(self) -> bool:
        """Whether a released claim takes the view's database writes with it."""
        return self.name == "database"

    def records(self) -> list[Rec]:
        if self.name == "database":
            return [
                Rec(
                    r.scope,
                    r.key,
                    r.state,
                    r.response_status,
                    r.headers,
                    bytes(r.response_body) if r.response_body is not None else None,
                    r.expires_at - r.created_at,
                )
                for r in IdempotencyRecord.objects.exclude(state="released")
            ]
        from django_idempotency.stores.redis.records import decode

        client = redis_client()
        found = []
        for name in client.scan_iter(match=django_settings.REDIS_TEST_PREFIX + ":*", count=1000):
            value, pttl = client.get(name), client.pttl(name)
            if value is None:
                continue
            rec = decode(value)
            if rec.state == "released":  # only remembers a released attempt's start
                continue
            response = rec.response
            found.append(
                Rec(
                    rec.scope,
                    rec.key,
                    rec.state,
                    response.status if response else None,
                    response.headers if response else [],
                    response.body if response else None,
                    timedelta(milliseconds=pttl),
                )
            )
        return found

    def expire_all(self) -> None:
        """Make every record past its TTL, as if a day had gone by."""
        if self.name == "database":
            IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
        else:
            client = redis_client()
            for name in client.scan_iter(
                match=django_settings.REDIS_TEST_PREFIX + ":*", count=1000
            ):
                client.pexpire(name, 1)
            while any(client.scan_iter(match=django_settings.REDIS_TEST_PREFIX + ":*", count=1000)):
                time.sleep(0.005)


def redis_client() -> Any:
    from django_redis import get_redis_connection

    return get_redis_connection("redis")


def delete_test_keys() -> None:
    """Delete this test run's keys (and only them) from the shared Redis."""
    client = redis_client()
    names = list(client.scan_iter(match=django_settings.REDIS_TEST_PREFIX + ":*", count=1000))
    for name in names:  # one key per command: works on a cluster too
        client.delete(name)


def require_redis() -> None:
    if find_spec("django_redis") is None:
        pytest.skip("django-redis is not installed (the [redis] extra)")
    if not os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL is not set (scripts/test sets it)")


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
