"""What the store's database cannot keep about a request is the client's error, not an outage.

PostgreSQL refuses a NUL byte in a text column: a guarded POST to
``/v1/jobs/%00/cancel`` must be the same 4xx there as on SQLite, never a 503
"store unavailable, retry" for a request that can never succeed.
Runs on every database (scripts/test's passes).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord
from testproject.api.models import Account, ApiKey
from tests.helpers import SPEC_JOB, envelope

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    account = Account.objects.create(user=User.objects.create_user("acme"), credits_cents=10_000)
    _, secret = ApiKey.issue(account)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return api


def post(client: APIClient, path: str, key: str = "k-1", data: Any = None) -> Any:
    return client.post(path, data or {}, format="json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.parametrize(
    "path", ["/v1/jobs/%00/cancel", "/v1/jobs/1%00/rate", "/t/widgets/%00/rename"]
)
def test_a_nul_byte_in_a_guarded_path_is_a_400_not_a_503(
    client: APIClient, client_alice: APIClient, path: str
) -> None:
    # The demo's routes take its API keys; the tests' own app takes a logged-in user.
    caller = client_alice if path.startswith("/t/") else client
    response = post(caller, path, data={"rating": 5})
    envelope(response, 400, "request_path_invalid")
    assert "Retry-After" not in response
    assert not IdempotencyRecord.objects.exists()
    # Decided before the claim: the store still works, for the next request too.
    job = post(client, "/v1/jobs", key="after", data=SPEC_JOB)
    assert job.status_code == 201, job.content


def test_a_nul_byte_in_the_key_is_the_key_error(client: APIClient) -> None:
    envelope(post(client, "/v1/jobs", key="a\x00b", data=SPEC_JOB), 400, "idempotency_key_invalid")


def _scope_with_nul(request: Any) -> str:
    return f"tenant\x00{request.user.pk}"


@override_settings(IDEMPOTENCY_SCOPE="tests.unit.test_unstorable._scope_with_nul")
def test_a_scope_with_a_nul_byte_is_stored_hashed(client: APIClient) -> None:
    first = post(client, "/v1/jobs", key="nul-scope", data=SPEC_JOB)
    assert first.status_code == 201, first.content
    (record,) = IdempotencyRecord.objects.all()
    assert record.scope.startswith("sha256:")
    replay = post(client, "/v1/jobs", key="nul-scope", data=SPEC_JOB)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content


# Transactional: MySQL and MariaDB commit DDL, and with it the test's other rows.
@pytest.mark.django_db(transaction=True)
def test_a_missing_table_is_a_configuration_error_and_its_cause_is_logged(
    client: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    # A real database error, not a mock: the store's table is gone (renamed,
    # and renamed back afterwards), as on a database that `migrate` never
    # reached. No retry can mend it: not a 503.
    table = IdempotencyRecord._meta.db_table
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {quote(table)} RENAME TO {quote(table + '_gone')}")
    try:
        with caplog.at_level(logging.ERROR, logger="django_idempotency"):
            response = post(client, "/v1/jobs", key="outage", data=SPEC_JOB)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {quote(table + '_gone')} RENAME TO {quote(table)}")
    envelope(response, 500, "idempotency_misconfigured")
    assert (response["X-Should-Retry"], response.get("Retry-After")) == ("false", None)
    (entry,) = [r for r in caplog.records if r.name.startswith("django_idempotency")]
    assert entry.levelno == logging.ERROR
    assert "POST /v1/jobs" in entry.getMessage()
    assert "is misconfigured" in entry.getMessage()
    # Which table, and the fix.
    assert f"no table {table!r}" in entry.getMessage()
    assert "run `manage.py migrate django_idempotency --database default`" in entry.getMessage()
    assert entry.exc_info is not None
