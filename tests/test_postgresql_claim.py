"""The database store's claim on PostgreSQL: migration 0003's function, and the
CTE that stands in for it where the function is missing.

The contract, race and outage tests run the function path on PostgreSQL; these
check what is particular to it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores import database
from tests.conftest import post
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the claim function is PostgreSQL's"
)
SIGNATURE = (
    f"{database.CLAIM_FUNCTION}(varchar, varchar, varchar, varchar, text, varchar, "
    "timestamptz, timestamptz, bigint)"
)


@pytest.fixture
def without_claim_function() -> Iterator[None]:
    """The function dropped, inside the test's transaction (undone with it)."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {SIGNATURE}")
    yield
    database._no_claim_function.discard(connection.alias)


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor refuses to run in a transaction
def test_sqlmigrate_shows_the_function_on_postgresql_only() -> None:
    out = io.StringIO()
    call_command("sqlmigrate", "django_idempotency", "0003", stdout=out)
    created = f"CREATE OR REPLACE FUNCTION {database.CLAIM_FUNCTION}(" in out.getvalue()
    assert created == (connection.vendor == "postgresql")


@postgresql_only
def test_migrate_installs_the_function() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [SIGNATURE])
        assert cursor.fetchone() == (True,)


@postgresql_only
def test_a_first_request_claims_with_one_call_and_a_replay_reads_with_one(
    client_alice: APIClient,
) -> None:
    with CaptureQueriesContext(connection) as first:
        assert post(client_alice, "/t/widgets", {"name": "a"}).status_code == 201
    store_sql = [q["sql"] for q in first.captured_queries if _is_store(q["sql"])]
    assert len(store_sql) == 2
    assert store_sql[0].startswith(f"SELECT * FROM {database.CLAIM_FUNCTION}(")
    assert store_sql[1].startswith("UPDATE ")

    with CaptureQueriesContext(connection) as replay:
        response = post(client_alice, "/t/widgets", {"name": "a"})
    assert response.status_code == 201
    assert response["Idempotent-Replayed"] == "true"
    store_sql = [q["sql"] for q in replay.captured_queries if _is_store(q["sql"])]
    assert len(store_sql) == 1
    assert store_sql[0].startswith(f"SELECT * FROM {database.CLAIM_FUNCTION}(")


@postgresql_only
def test_without_the_function_the_cte_claims_and_a_warning_says_why(
    client_alice: APIClient, without_claim_function: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        created = post(client_alice, "/t/widgets", {"name": "a"})
    assert created.status_code == 201
    assert Widget.objects.count() == 1
    assert [r.getMessage() for r in caplog.records if database.CLAIM_FUNCTION in r.getMessage()]
    assert connection.alias in database._no_claim_function

    # Every outcome still comes out right on the CTE, and it warns only once.
    caplog.clear()
    with CaptureQueriesContext(connection) as replay_queries:
        replay = post(client_alice, "/t/widgets", {"name": "a"})
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == created.content
    assert not any(_is_store(q["sql"]) and "FUNCTION" in q["sql"] for q in replay_queries)
    assert post(client_alice, "/t/widgets", {"name": "b"}).status_code == 409
    assert post(client_alice, "/t/widgets", {"name": "c"}, key="k2").status_code == 201
    assert Widget.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 2
    assert not [r for r in caplog.records if r.name == "django_idempotency"]


@postgresql_only
def test_without_the_function_under_atomic_requests_the_outer_transaction_survives(
    client_alice: APIClient, without_claim_function: None
) -> None:
    # The failed call is rolled back to the claim's savepoint, not further.
    saved = connection.settings_dict["ATOMIC_REQUESTS"]
    connection.settings_dict["ATOMIC_REQUESTS"] = True
    try:
        assert post(client_alice, "/t/widgets", {"name": "a"}).status_code == 201
    finally:
        connection.settings_dict["ATOMIC_REQUESTS"] = saved
    assert Widget.objects.count() == 1
    assert IdempotencyRecord.objects.get().state == "completed"


def _is_store(sql: str) -> bool:
    return IdempotencyRecord._meta.db_table in sql or database.CLAIM_FUNCTION in sql
