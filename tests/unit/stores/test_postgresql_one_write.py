"""One durable write per first request on PostgreSQL (migration 0002's claim function).

Under READ COMMITTED the claim takes the advisory lock and writes nothing; the
finished record is inserted once by ``finish``. These tests prove that the
key is still guarded without a row: a duplicate is "in use" at once, a killed worker leaves nothing, a record committed between a
claimant's lookup and its lock is seen, and REPEATABLE READ keeps writing first.

The races are made deterministic with a hook: a claimant session whose
search_path puts a schema before pg_catalog calls that schema's
``pg_try_advisory_xact_lock``, which waits on a gate that the test opens after
the other claimant has committed. So the second claimant's lookup runs before
the commit and its lock after it: the "committed after my snapshot" window.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from django_idempotency import signals
from django_idempotency.keys import scoped_key
from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores.base import RequestRecord
from django_idempotency.stores.database import locks, sql
from tests.helpers import poll, post, post_as
from tests.testapp import views
from tests.testapp.models import Widget

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's claim"),
    pytest.mark.django_db(transaction=True),
]

TABLE = IdempotencyRecord._meta.db_table
GATE = 7_140_005  # the hook's advisory lock: held by the test until it opens the gate
HOOK = f"""
CREATE SCHEMA IF NOT EXISTS claim_race_hook;
CREATE OR REPLACE FUNCTION claim_race_hook.pg_try_advisory_xact_lock(p bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared({GATE});
    RETURN pg_catalog.pg_try_advisory_xact_lock(p);
END $$;
"""


def raw(**options: Any) -> psycopg.Connection[Any]:
    """A connection of its own to the test database (a claimant, or the gate)."""
    s = connection.settings_dict
    return psycopg.connect(
        dbname=s["NAME"],
        user=s["USER"],
        password=s["PASSWORD"],
        host=s["HOST"] or None,
        port=s["PORT"] or None,
        **options,
    )


def record(key: str = "k", scope: str = "user:1") -> RequestRecord:
    now = timezone.now()
    return RequestRecord(scope, key, "fp", "POST", "/t/widgets", now, now + timedelta(days=1))


def claim(conn: psycopg.Connection[Any], r: RequestRecord, function: str) -> tuple[str, Any]:
    """Call a claim function in ``conn``'s open transaction: (outcome, record id)."""
    row = conn.execute(
        f"SELECT outcome, record_id FROM {function}(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            r.scope,
            r.key,
            r.fingerprint,
            r.method,
            r.path,
            "in_flight",
            r.created_at,
            r.expires_at,
            locks.lock_id(r),
        ],
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def finish(conn: psycopg.Connection[Any], r: RequestRecord, pk: int | None) -> None:
    """What DatabaseStore.finish sends, then COMMIT."""
    if pk is None:
        params = [r.scope, r.key, scoped_key(r.scope, r.key), r.fingerprint, r.method, r.path]
        params += ["completed", 201]
        params += ["[]", b"{}", r.created_at, r.expires_at]
        conn.execute(sql.insert(connection), params)
    else:
        conn.execute(sql.FINISH.format(table=TABLE), ["completed", 201, "[]", b"{}", pk])
    conn.commit()


def rows() -> int:
    return IdempotencyRecord.objects.count()


@pytest.fixture
def gate() -> Iterator[psycopg.Connection[Any]]:
    """The hook installed and its gate shut; yields the gate's connection."""
    with raw(autocommit=True) as setup:
        setup.execute(HOOK)
        setup.execute("SELECT pg_advisory_lock(%s)", [GATE])
        try:
            yield setup
        finally:
            setup.execute("SELECT pg_advisory_unlock_all()")
            setup.execute("DROP SCHEMA claim_race_hook CASCADE")


def hooked(isolation: str = "READ COMMITTED") -> psycopg.Connection[Any]:
    conn = raw()
    conn.execute("SET search_path = claim_race_hook, public, pg_catalog")
    conn.execute(f"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {isolation}")
    conn.commit()
    return conn


def waiting_at_gate(gate: psycopg.Connection[Any]) -> bool:
    row = gate.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
        [GATE],
    ).fetchone()
    return bool(row and row[0])


def race_in_window(
    gate: psycopg.Connection[Any],
    first: str,
    second: str,
    isolation: str = "READ COMMITTED",
) -> tuple[str, Any] | BaseException:
    """``second`` looks the key up, then ``first`` claims it and commits its
    record, then ``second`` takes the lock: what ``second``'s claim answers."""
    r = record()
    with raw() as a, hooked(isolation) as b, ThreadPoolExecutor(1) as pool:

        def second_claim() -> tuple[str, Any] | BaseException:
            try:
                return claim(b, r, second)
            except psycopg.Error as exc:
                return exc

        later = pool.submit(second_claim)
        assert poll(lambda: waiting_at_gate(gate), 10), "the second claimant never looked up"
        outcome, pk = claim(a, r, first)
        assert outcome == "claimed"
        finish(a, r, pk)  # committed while the second claimant waits
        gate.execute("SELECT pg_advisory_unlock(%s)", [GATE])
        answer = later.result(timeout=30)
        b.rollback()
    return answer


def test_a_first_request_writes_the_record_once(client_alice: APIClient) -> None:
    def written() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = %s",
                [TABLE],
            )
            row = cursor.fetchone()
        return (row[0], row[1]) if row else (0, 0)

    # pg_stat_xact_* counts this transaction's row versions, subtransactions
    # (the request's savepoint) included, without waiting for the stats flush.
    with transaction.atomic():
        before = written()
        assert post(client_alice, "/t/widgets", {"name": "a"}).status_code == 201
        after = written()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 0)  # one INSERT, no UPDATE
        replay = post(client_alice, "/t/widgets", {"name": "a"})
        assert replay["Idempotent-Replayed"] == "true"
        assert written() == after
    assert IdempotencyRecord.objects.get().state == "completed"


def test_an_expired_record_is_taken_over_with_one_write(client_alice: APIClient) -> None:
    assert post(client_alice, "/t/widgets", {"name": "old"}).status_code == 201
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    r = IdempotencyRecord.objects.get()
    with raw() as conn:
        outcome = claim(conn, record(r.key, scope=r.scope), sql.CLAIM_FUNCTION)
        assert outcome == ("expired", None)
        conn.rollback()
    created = post(client_alice, "/t/widgets", {"name": "new"})
    assert created.status_code == 201
    assert "Idempotent-Replayed" not in created
    taken = IdempotencyRecord.objects.get()  # the same row, taken over in place
    assert (taken.pk, taken.state) == (r.pk, "completed")
    assert taken.expires_at > timezone.now()
    assert Widget.objects.count() == 2


def test_while_the_view_runs_there_is_no_row_and_a_duplicate_is_in_use_at_once(
    alice: User,
) -> None:
    views.hold.clear()
    views.started.clear()

    def send(name: str) -> Any:
        return post_as(alice, "/t/widgets", {"name": name}, key="busy")

    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(send, "first")
            assert views.started.wait(10)
            assert rows() == 0  # the claim is the lock alone
            duplicate = send("second")
            assert duplicate.status_code == 409
            assert duplicate.json()["error"]["type"] == "idempotency_key_in_use"
            views.hold.set()
            assert first.result(timeout=30).status_code == 201
    finally:
        views.hold.set()
    assert Widget.objects.count() == 1
    assert rows() == 1


def test_a_killed_claimant_leaves_no_row_and_frees_the_key() -> None:
    r = record()
    victim = raw()
    assert claim(victim, r, sql.CLAIM_FUNCTION) == ("claimed", None)
    (pid,) = victim.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]
    with raw() as other:
        assert claim(other, r, sql.CLAIM_FUNCTION)[0] == "locked"
        other.rollback()
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
        other.commit()

        def claimed() -> bool:
            # The server ends the victim's transaction (and its lock) shortly.
            outcome = claim(other, r, sql.CLAIM_FUNCTION)[0]
            other.rollback()
            return outcome == "claimed"

        assert poll(claimed, 10)
    victim.close()
    assert rows() == 0


def test_a_record_committed_between_the_lookup_and_the_lock_is_seen(
    gate: psycopg.Connection[Any],
) -> None:
    answer = race_in_window(gate, sql.CLAIM_FUNCTION, sql.CLAIM_FUNCTION)
    assert answer == ("existing", None)
    assert rows() == 1


def test_under_repeatable_read_the_claim_writes_first() -> None:
    with raw() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        outcome, pk = claim(conn, record(), sql.CLAIM_FUNCTION)
        assert outcome == "claimed"
        assert pk is not None  # the in-flight row, as version 1 writes it
        conn.rollback()


def test_under_repeatable_read_a_record_committed_after_the_snapshot_is_never_run_over(
    gate: psycopg.Connection[Any],
) -> None:
    # The re-read would not see the commit at REPEATABLE READ: the write-first
    # insert meets the committed row instead (a serialization failure, or the
    # record), and the second claimant never gets to run the view.
    answer = race_in_window(
        gate, sql.CLAIM_FUNCTION, sql.CLAIM_FUNCTION, isolation="REPEATABLE READ"
    )
    if isinstance(answer, BaseException):
        assert getattr(answer, "sqlstate", None) == "40001", answer
    else:
        assert answer[0] != "claimed", answer
    assert rows() == 1


def test_a_live_record_written_without_the_lock_rolls_the_request_back(alice: User) -> None:
    views.hold.clear()
    views.started.clear()

    try:
        with ThreadPoolExecutor(1) as pool:
            mine = pool.submit(post_as, alice, "/t/widgets", {"name": "mine"}, key="stolen")
            assert views.started.wait(10)
            # Someone who does not take the claim's lock writes a live record.
            intruder = record("stolen", scope=f"user:{alice.pk}")
            with raw() as conn:
                finish(conn, intruder, None)
            views.hold.set()
            response = mine.result(timeout=30)
    finally:
        views.hold.set()
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "idempotency_store_unavailable"
    assert Widget.objects.count() == 0  # the view's writes were rolled back
    assert IdempotencyRecord.objects.get().fingerprint == "fp"  # theirs, untouched


def test_the_admin_shows_the_requests_running_right_now(alice: User) -> None:
    from django.test import Client

    admin_user = User.objects.create_superuser("root", password="x")
    browser = Client()
    browser.force_login(admin_user)

    def notice() -> str:
        response = browser.get("/admin/django_idempotency/idempotencyrecord/")
        assert response.status_code == 200
        return " ".join(str(m) for m in response.context["messages"])

    assert notice() == "No request is running right now."
    views.hold.clear()
    views.started.clear()

    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(post_as, alice, "/t/widgets", {"name": "slow"}, key="slow")
            assert views.started.wait(10)
            shown = notice()
            assert shown.startswith("1 request is running right now"), shown
            assert rows() == 0
            views.hold.set()
            assert running.result(timeout=30).status_code == 201
    finally:
        views.hold.set()
    assert notice() == "No request is running right now."


def test_the_running_notice_shows_once_after_an_action() -> None:
    from django.test import Client

    from tests.helpers import make_record

    browser = Client()
    browser.force_login(User.objects.create_superuser("root", password="x"))
    record = make_record("k1")
    response = browser.post(
        "/admin/django_idempotency/idempotencyrecord/",
        {"action": "expire_selected", "_selected_action": [record.pk]},
        follow=True,
    )
    shown = [str(m) for m in response.context["messages"]]
    assert shown.count("No request is running right now.") == 1, shown
    assert any(m.startswith("Expired 1 key") for m in shown), shown


def test_at_repeatable_read_concurrent_requests_with_one_key_run_the_view_once(
    alice: User,
) -> None:
    """The whole store at REPEATABLE READ (a DATABASES ``isolation_level``):
    of twenty same-key requests one runs. (Their window is too short to catch
    a claim that forgot to write first; the forced race above does that.)"""
    options = connection.settings_dict["OPTIONS"]
    options["isolation_level"] = psycopg.IsolationLevel.REPEATABLE_READ
    connections.close_all()
    barrier = threading.Barrier(20)

    def send(n: int) -> Any:
        barrier.wait(timeout=30)
        return post_as(alice, "/t/widgets", {"name": "rr"}, key="rr")

    try:
        with ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(send, range(20)))
    finally:
        options.pop("isolation_level", None)
        connections.close_all()
    runs = [r for r in replies if r.status_code == 201 and "Idempotent-Replayed" not in r]
    assert len(runs) == 1, [(r.status_code, r.content[:80]) for r in replies]
    # The rest: replays, "in use", or (a serialization failure) "unavailable".
    assert {r.status_code for r in replies} <= {201, 409, 503}
    assert Widget.objects.count() == 1
    assert IdempotencyRecord.objects.get().state == "completed"


def test_the_record_carries_the_commit_and_on_commit_callbacks_still_run(
    client_alice: APIClient,
) -> None:
    # With psycopg 3 binding client-side, the claim carries the BEGIN and the
    # record's INSERT the COMMIT: Django's block then finds the transaction
    # ended, and must still run what the view queued for after the commit.
    ran: list[bool] = []

    def on_claim(**kwargs: Any) -> None:
        transaction.on_commit(lambda: ran.append(True))

    signals.claimed.connect(on_claim)
    try:
        with CaptureQueriesContext(connection) as captured:
            created = post(client_alice, "/t/widgets", {"name": "a"}, key="one-trip")
    finally:
        signals.claimed.disconnect(on_claim)
    assert created.status_code == 201
    written = [q["sql"] for q in captured.captured_queries if TABLE in q["sql"]]
    # BEGIN rides on the claim: three round trips with the view's INSERT.
    sent = [q["sql"] for q in captured.captured_queries]
    (claim,) = [q for q in sent if sql.CLAIM_FUNCTION in q]
    assert claim.startswith(f"BEGIN; SELECT * FROM {sql.CLAIM_FUNCTION}(")
    assert written[-1].startswith("INSERT") and written[-1].endswith("; COMMIT")
    assert ran == [True]
    assert connection.get_autocommit() and not connection.in_atomic_block
    with raw() as other:  # committed: another session sees both writes
        found = other.execute(f"SELECT state FROM {TABLE} WHERE key = 'one-trip'").fetchall()
        assert found == [("completed",)]
        assert other.execute("SELECT count(*) FROM testapp_widget").fetchone() == (1,)
    replay = post(client_alice, "/t/widgets", {"name": "a"}, key="one-trip")
    assert replay["Idempotent-Replayed"] == "true"


def test_a_view_that_leaves_its_transaction_to_roll_back_commits_nothing(
    client_alice: APIClient,
) -> None:
    # The COMMIT rides on the record's write only when nothing asked for a
    # rollback: here the block rolls back, the record and the widget with it,
    # and the answer says that nothing was done.
    with CaptureQueriesContext(connection) as captured:
        first = post(client_alice, "/t/apiview", {"outcome": "rollback"}, key="rb")
    assert first.status_code == 503
    assert first.json()["error"]["type"] == "idempotency_store_unavailable"
    assert not any("COMMIT" in (q["sql"] or "") for q in captured.captured_queries)
    assert rows() == 0
    assert Widget.objects.count() == 0
    again = post(client_alice, "/t/apiview", {"outcome": "ok"}, key="rb")
    assert again.status_code == 201, "the key was left free"


def test_inside_an_outer_transaction_the_commit_is_left_to_it(client_alice: APIClient) -> None:
    # The claim's block is a savepoint there: committing would end the
    # caller's transaction under it.
    with transaction.atomic():
        with CaptureQueriesContext(connection) as captured:
            assert post(client_alice, "/t/widgets", {"name": "a"}).status_code == 201
        assert not any("COMMIT" in (q["sql"] or "") for q in captured.captured_queries)
        assert connection.in_atomic_block
        transaction.set_rollback(True)
    assert rows() == 0
    assert Widget.objects.count() == 0
