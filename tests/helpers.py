"""What tests share besides fixtures (those are in conftest.py): requests and
their answers, records, the store under test, system check ids, races."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from django.core.checks import CheckMessage
from django.db import connections
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from django_idempotency.checks import check_settings
from django_idempotency.models import IdempotencyRecord
from tests.testapp.models import Widget

# The spec's example request to the demo's POST /v1/jobs, exactly.
SPEC_JOB = {
    "type": "data_collection",
    "description": "Photo of product packaging",
    "files_needed": 10,
    "accepted_formats": ["image/jpeg"],
    "price_per_file_cents": 50,
}

ROOT = Path(__file__).resolve().parent.parent
REQUEST_ID = re.compile(r"^req_[0-9A-HJKMNP-TV-Z]{26}$")
T = TypeVar("T")


def on_postgresql() -> bool:
    """Whether this pass of the suite runs on PostgreSQL (scripts/test's second pass)."""
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def on_mysql() -> bool:
    """Whether this pass of the suite runs on MariaDB (scripts/test's third pass)."""
    return os.environ.get("DATABASE_URL", "").startswith("mysql://")


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


def post_as(
    user: User, path: str, data: object = None, key: str | None = "k1", **extra: str
) -> Any:
    """post() from a client of ``user``'s own, for another thread: that thread's
    database connections are closed afterwards, so that none outlives the test."""
    client = APIClient()
    client.force_authenticate(user)
    try:
        return post(client, path, data, key=key, **extra)
    finally:
        connections.close_all()


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


def envelope(
    response: Any, status: int | None = None, error_type: str | None = None
) -> dict[str, Any]:
    """The error of an answer in the one error envelope, checked for its shape
    (JSON ``{"error": {"type", "message", "request_id", ...}}``, the same id in
    the Request-Id header) and, if given, for its status and type. ``response``:
    Django's test client's, requests' or httpx's, or a tests.servers.http.Reply."""
    code = getattr(response, "status_code", None) or response.status
    body = response.content if hasattr(response, "content") else response.body
    headers = {name.lower(): value for name, value in response.headers.items()}
    if status is not None:
        assert code == status, (code, body[:300])
    assert headers["content-type"] == "application/json", (code, body[:300])
    document = json.loads(body)
    assert set(document) == {"error"}, document
    error: dict[str, Any] = document["error"]
    assert {"type", "message", "request_id"} <= set(error), error
    assert error["message"], error
    assert REQUEST_ID.match(error["request_id"]), error
    assert headers["request-id"] == error["request_id"]
    if error_type is not None:
        assert error["type"] == error_type, error
    return error


def assert_one_run(responses: list[Any]) -> None:
    """Racing ``responses`` to one key of /t/widgets: the view ran once, one
    answer is its response, every other a replay of it or 409 in use."""
    assert Widget.objects.count() == 1
    created = [r for r in responses if r.status_code == 201]
    in_use = [r for r in responses if r.status_code == 409]
    assert len(created) + len(in_use) == len(responses), [r.status_code for r in responses]
    assert len({r.content for r in created}) == 1, "every 201 is the one stored response"
    assert sum("Idempotent-Replayed" not in r for r in created) == 1
    for r in in_use:
        envelope(r, 409, "idempotency_key_in_use")
        assert r["Retry-After"] == "1"


def check_ids(messages: Iterable[CheckMessage] | None = None, **settings: Any) -> list[str]:
    """The ids of system check ``messages``, or of the package's checks run under
    ``settings``; every message must carry a hint."""
    if messages is None:
        with override_settings(**settings):
            messages = check_settings()
    found = list(messages)
    for message in found:
        assert message.hint, f"{message.id} has no hint"
    return [message.id for message in found]


def race(n: int, send: Callable[[int], T]) -> list[T]:
    """``send(0)`` ... ``send(n - 1)`` in ``n`` threads, let go at the same moment."""
    barrier = threading.Barrier(n)

    def one(i: int) -> T:
        barrier.wait()
        return send(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


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

    def raw_values(self) -> list[bytes]:
        """Everything the store holds, read as an operator with access would: every
        column of every row by raw SQL, or every Redis value by GET and by DUMP."""
        if self.name == "database":
            with connections["default"].cursor() as cursor:
                cursor.execute(f"SELECT * FROM {IdempotencyRecord._meta.db_table}")
                rows = cursor.fetchall()
            assert rows
            return [
                bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
                for row in rows
                for value in row
            ]
        client = redis_client()
        names = list(client.scan_iter(match=django_settings.REDIS_TEST_PREFIX + ":*"))
        assert names
        return [value for name in names for value in (client.get(name), client.dump(name))]

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


def demo_client(name: str = "acme") -> APIClient:
    """A client of the demo's API, holding a bearer key of a new account."""
    from testproject.api.models import Account, ApiKey

    account = Account.objects.create(user=User.objects.create_user(name), credits_cents=0)
    _, secret = ApiKey.issue(account)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.account = account  # type: ignore[attr-defined]
    return client


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
