from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from tests.testapp import views


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
