"""The database store's claim on PostgreSQL: the function of migration 0002.

The contract, race and outage tests run the function path on PostgreSQL; these
check what is particular to it, and what a database without it answers.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores.database import sql
from django_idempotency.stores.database.checks import check_database
from tests.helpers import post
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the claim function is PostgreSQL's"
)


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor refuses to run in a transaction
def test_sqlmigrate_shows_the_function_on_postgresql_only() -> None:
    out = io.StringIO()
    call_command("sqlmigrate", "django_idempotency", "0002", stdout=out)
    created = f"CREATE OR REPLACE FUNCTION {sql.CLAIM_FUNCTION}(" in out.getvalue()
    assert created == (connection.vendor == "postgresql")


@postgresql_only
def test_migrate_installs_the_function() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [sql.CLAIM_SIGNATURE])
        assert cursor.fetchone() == (True,)


@postgresql_only
def test_a_first_request_claims_with_one_call_and_a_replay_reads_with_one(
    client_alice: APIClient,
) -> None:
    with CaptureQueriesContext(connection) as first:
        assert post(client_alice, "/t/widgets", {"name": "a"}).status_code == 201
    store_sql = [q["sql"] for q in first.captured_queries if _is_store(q["sql"])]
    assert len(store_sql) == 2
    assert store_sql[0].startswith(f"SELECT * FROM {sql.CLAIM_FUNCTION}(")
    # The claim wrote nothing; the finished record is inserted once.
    assert store_sql[1].startswith("INSERT ")

    with CaptureQueriesContext(connection) as replay:
        response = post(client_alice, "/t/widgets", {"name": "a"})
    assert response.status_code == 201
    assert response["Idempotent-Replayed"] == "true"
    store_sql = [q["sql"] for q in replay.captured_queries if _is_store(q["sql"])]
    assert len(store_sql) == 1
    assert store_sql[0].startswith(f"SELECT * FROM {sql.CLAIM_FUNCTION}(")


def _is_store(statement: str) -> bool:
    return IdempotencyRecord._meta.db_table in statement or sql.CLAIM_FUNCTION in statement


def _misconfigured(response: Any) -> None:
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "idempotency_misconfigured"
    assert response["X-Should-Retry"] == "false"


@postgresql_only
def test_a_missing_table_is_misconfigured(client_alice: APIClient) -> None:
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute(f"DROP TABLE {IdempotencyRecord._meta.db_table} CASCADE")
    # A configuration error (migrate has not run there), not an outage.
    _misconfigured(post(client_alice, "/t/widgets", {"name": "a"}))


@postgresql_only
def test_without_the_function_a_request_is_misconfigured_and_the_check_says_so(
    client_alice: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert check_database(databases=["default"]) == []
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute(f"DROP FUNCTION {sql.CLAIM_SIGNATURE}")
    _misconfigured(post(client_alice, "/t/widgets", {"name": "a"}))
    assert Widget.objects.count() == 0  # never a fallback: the view did not run
    assert any("manage.py migrate" in r.getMessage() for r in caplog.records)
    (error,) = check_database(databases=["default"])
    assert error.id == "django_idempotency.E034"
    assert "manage.py migrate django_idempotency 0001" in (error.hint or "")
    # Only when asked about that database.
    assert check_database(databases=None) == []


@postgresql_only
def test_the_check_names_fake_initial_for_a_table_made_without_migrations() -> None:
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute(f"DROP FUNCTION {sql.CLAIM_SIGNATURE}")
        cursor.execute("DELETE FROM django_migrations WHERE app = 'django_idempotency'")
    (error,) = check_database(databases=["default"])
    assert error.id == "django_idempotency.E034"
    assert "--fake-initial" in (error.hint or "")


@postgresql_only
def test_a_role_without_execute_on_the_function_is_misconfigured(
    client_alice: APIClient,
) -> None:
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if cursor.fetchone()[0]:
            pytest.skip("a superuser may call any function")
        cursor.execute(
            f"REVOKE EXECUTE ON FUNCTION {sql.CLAIM_SIGNATURE} FROM PUBLIC, CURRENT_USER"
        )
    _misconfigured(post(client_alice, "/t/widgets", {"name": "a"}))
    assert Widget.objects.count() == 0
