"""Records are found by a digest of (scope, key), byte for byte, on every
database: a collation that ignores case or trailing spaces (MySQL's and
MariaDB's defaults) can never merge two callers or two keys."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from django_idempotency.keys import scoped_key
from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores.database import sql
from tests.helpers import post
from tests.testapp.models import Widget


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("first", "second"),
    [("Case-X", "case-x"), ('"pad "', "pad"), ("k", "K")],
)
def test_keys_that_differ_in_case_or_padding_are_two_records(
    client_alice: APIClient, first: str, second: str
) -> None:
    a = post(client_alice, "/t/widgets", {"name": "a"}, key=first)
    b = post(client_alice, "/t/widgets", {"name": "b"}, key=second)
    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b
    assert b.json()["name"] == "b"
    assert Widget.objects.count() == IdempotencyRecord.objects.count() == 2


@pytest.mark.django_db
def test_scopes_that_differ_in_case_are_two_callers(client_alice: APIClient, settings) -> None:  # type: ignore[no-untyped-def]
    settings.IDEMPOTENCY_SCOPE = "tests.testapp.views.tenant_scope"
    a = post(client_alice, "/t/widgets", {"name": "a"}, key="order-1", HTTP_X_TENANT="client:C1")
    b = post(client_alice, "/t/widgets", {"name": "b"}, key="order-1", HTTP_X_TENANT="client:c1")
    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b
    assert sorted(IdempotencyRecord.objects.values_list("scope", flat=True)) == [
        "client:C1",
        "client:c1",
    ]


@pytest.mark.django_db
def test_a_record_written_through_the_orm_gets_its_digest() -> None:
    now = timezone.now()
    record = IdempotencyRecord.objects.create(
        scope="tenant:Zoë",
        key="Case-X",
        fingerprint="f",
        method="POST",
        path="/",
        expires_at=now + timedelta(hours=1),
    )
    record.refresh_from_db()
    assert record.digest == scoped_key("tenant:Zoë", "Case-X")


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the SQL digest is PostgreSQL's")
@pytest.mark.parametrize(("scope", "key"), [("user:1", "k"), ("tenant:Zoë", "Case-X ")])
def test_the_claim_function_computes_the_digest_as_the_store_does(scope: str, key: str) -> None:
    digest = sql.DIGEST.replace("p_scope", "%s").replace("p_key", "%s")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {digest}", [scope, key])
        assert cursor.fetchone()[0] == scoped_key(scope, key)
