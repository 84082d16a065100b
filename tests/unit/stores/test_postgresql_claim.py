"""The database store's claim on PostgreSQL: migration 0005's function (and
0003's, which stands in for it where 0005 has not run), and the CTE that stands
in for both where neither is there.

The contract, race and outage tests run the function path on PostgreSQL; these
check what is particular to it.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores import database
from tests.helpers import post
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the claim function is PostgreSQL's"
)
ARGUMENTS = "(varchar, varchar, varchar, varchar, text, varchar, timestamptz, timestamptz, bigint)"
SIGNATURE = database.CLAIM_FUNCTION + ARGUMENTS
SIGNATURE_V1 = database.CLAIM_FUNCTION_V1 + ARGUMENTS


def on_cte() -> bool:
    """Whether claims on the default database skip both functions for the CTE."""
    return (connection.alias, database.CLAIM_FUNCTION_V1) in database._missing_until


def forget_missing() -> None:
    for function in (database.CLAIM_FUNCTION, database.CLAIM_FUNCTION_V1):
        database._missing_until.pop((connection.alias, function), None)


@pytest.fixture
def without_claim_function() -> Iterator[None]:
    """Both functions dropped, inside the test's transaction (undone with it)."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {SIGNATURE}")
        cursor.execute(f"DROP FUNCTION {SIGNATURE_V1}")
    yield
    forget_missing()


@pytest.mark.parametrize(
    ("migration", "function"),
    [("0003", database.CLAIM_FUNCTION_V1), ("0005", database.CLAIM_FUNCTION)],
)
@pytest.mark.django_db(transaction=True)  # SQLite's schema editor refuses to run in a transaction
def test_sqlmigrate_shows_the_function_on_postgresql_only(migration: str, function: str) -> None:
    out = io.StringIO()
    call_command("sqlmigrate", "django_idempotency", migration, stdout=out)
    created = f"CREATE OR REPLACE FUNCTION {function}(" in out.getvalue()
    assert created == (connection.vendor == "postgresql")


@postgresql_only
def test_migrate_installs_both_functions() -> None:
    with connection.cursor() as cursor:
        for signature in (SIGNATURE, SIGNATURE_V1):
            cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [signature])
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
    # The claim wrote nothing; the finished record is inserted once.
    assert store_sql[1].startswith("INSERT ")

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
    assert on_cte()

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
    return IdempotencyRecord._meta.db_table in sql or "django_idempotency_claim_" in sql


# The fallback under concurrency, and back to the function (issue 15).

RACERS = 200
THREADS = 20
# The functions as the last migration that defines them (0007) left them.
_functions = import_module("django_idempotency.migrations.0007_record_digest")


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_with_the_function_gone_200_concurrent_requests_all_succeed_and_it_comes_back(
    alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget_missing()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {SIGNATURE}")
        cursor.execute(f"DROP FUNCTION {SIGNATURE_V1}")
    try:
        # The first THREADS requests call the missing function at the same moment.
        barrier = threading.Barrier(THREADS)
        local = threading.local()

        def one(n: int) -> tuple[int, bytes]:
            if not hasattr(local, "client"):
                local.client = APIClient()
                local.client.force_authenticate(alice)
                barrier.wait(timeout=60)
            response = post(local.client, "/t/widgets", {"name": f"w{n}"}, key=f"race-{n}")
            return response.status_code, response.content

        def close_connections() -> None:
            barrier.wait(timeout=120)
            connections.close_all()

        with ThreadPoolExecutor(THREADS) as pool:
            replies = list(pool.map(one, range(RACERS)))
            # Every thread's connection closed (each pool thread runs one of these).
            barrier = threading.Barrier(THREADS)
            list(pool.map(lambda _: close_connections(), range(THREADS)))
        statuses = [status for status, _ in replies]
        assert statuses.count(503) == 0, [body for status, body in replies if status != 201][:3]
        assert statuses == [201] * RACERS
        assert Widget.objects.count() == RACERS  # each view ran once
        assert on_cte()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(_functions.CREATE_V1)
            cursor.execute(_functions.CREATE_V2)

    # migrate put it back: the next attempt (every CLAIM_FUNCTION_RETRY seconds,
    # here at once) finds it, and claims use it from then on.
    monkeypatch.setattr(database, "CLAIM_FUNCTION_RETRY", 0.0)
    for function in (database.CLAIM_FUNCTION, database.CLAIM_FUNCTION_V1):
        database._missing_until[connection.alias, function] = 0.0
    client = APIClient()
    client.force_authenticate(alice)
    for n in range(2):
        with CaptureQueriesContext(connection) as queries:
            assert post(client, "/t/widgets", {"name": "back"}, key=f"back-{n}").status_code == 201
        claim = next(q["sql"] for q in queries.captured_queries if _is_store(q["sql"]))
        assert claim.startswith(f"SELECT * FROM {database.CLAIM_FUNCTION}(")
        assert (connection.alias, database.CLAIM_FUNCTION) not in database._missing_until


@postgresql_only
def test_after_a_fallback_the_cte_is_used_until_the_retry_time(
    client_alice: APIClient, without_claim_function: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert post(client_alice, "/t/widgets", {"name": "a"}, key="k1").status_code == 201
    # Within CLAIM_FUNCTION_RETRY: straight to the CTE, no failed call first.
    with CaptureQueriesContext(connection) as queries:
        assert post(client_alice, "/t/widgets", {"name": "b"}, key="k2").status_code == 201
    assert not any("django_idempotency_claim_" in q["sql"] for q in queries.captured_queries)
    # Past it: the function is tried once more, fails, and the CTE claims anyway.
    for function in (database.CLAIM_FUNCTION, database.CLAIM_FUNCTION_V1):
        database._missing_until[connection.alias, function] = 0.0
    with CaptureQueriesContext(connection) as queries:
        assert post(client_alice, "/t/widgets", {"name": "c"}, key="k3").status_code == 201
    for function in (database.CLAIM_FUNCTION, database.CLAIM_FUNCTION_V1):
        calls = [q["sql"] for q in queries.captured_queries if function in q["sql"]]
        assert len(calls) == 1
        assert database._missing_until[connection.alias, function] > 0
    assert Widget.objects.count() == 3


@postgresql_only
def test_a_missing_table_is_not_taken_for_a_missing_function(client_alice: APIClient) -> None:
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute(f"DROP TABLE {IdempotencyRecord._meta.db_table} CASCADE")
    response = post(client_alice, "/t/widgets", {"name": "a"})
    # A configuration error (migrate has not run there), not an outage.
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "idempotency_misconfigured"
    assert not on_cte()
    assert (connection.alias, database.CLAIM_FUNCTION) not in database._missing_until


@postgresql_only
def test_a_role_without_execute_on_the_function_falls_back_too(client_alice: APIClient) -> None:
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if cursor.fetchone()[0]:
            pytest.skip("a superuser may call any function")
        for signature in (SIGNATURE, SIGNATURE_V1):
            cursor.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC, CURRENT_USER")
    try:
        assert post(client_alice, "/t/widgets", {"name": "a"}).status_code == 201
        assert on_cte()
        assert Widget.objects.count() == 1
    finally:
        forget_missing()
