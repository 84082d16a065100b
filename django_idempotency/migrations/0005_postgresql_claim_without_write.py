"""The database store's claim on PostgreSQL, version 2: claim without writing.

Version 1 (migration 0003) inserts an in-flight row, and the store's ``finish``
then updates it to completed: two writes of the record per first request,
each a heap tuple, index entries and WAL. But what decides who runs is the
advisory transaction lock, not the row: a duplicate takes the lock first and,
not getting it, answers "in use" at once. So this version claims by taking
the lock alone, and ``finish`` inserts the finished record once.

Steps, under READ COMMITTED (PostgreSQL's default):

1. the live (unexpired) record of (scope, key), if there is one: 'existing'
   (replays and conflicts never touch the lock);
2. else ``pg_try_advisory_xact_lock``, which never waits: 'locked' if another
   transaction holds it (a duplicate still running);
3. else look up the live record AGAIN, in a new statement: a previous holder
   of the lock may have committed its record after step 1 read. This re-read
   sees it, for two reasons that PostgreSQL documents and its source states:

   * a VOLATILE function takes a new snapshot for each statement it runs
     under READ COMMITTED ("VOLATILE functions obtain a fresh snapshot at the
     start of each query they execute": the manual, "Function Volatility
     Categories", xfunc-volatility);
   * a transaction stops being "in progress" for new snapshots before its locks
     are released: ``CommitTransaction()`` in src/backend/access/transam/xact.c
     calls ``ProcArrayEndTransaction()`` ("Let others know about no transaction
     in progress by me. Note that this must be done _before_ releasing locks we
     hold and _after_ RecordTransactionCommit.") before
     ``ResourceOwnerRelease(..., RESOURCE_RELEASE_LOCKS, ...)``. So once we hold
     the lock, every earlier holder's commit is visible to a snapshot taken now.

   Found: 'existing'. A released marker is found here as in step 1, and the
   store takes it over as before (two writes there; it is rare).
4. else nothing is written, and the answer says how ``finish`` will write the
   record: 'claimed' (no record of the key at all: a plain INSERT, the
   cheapest write) or 'expired' (an expired record that the purge has not
   deleted yet: ``INSERT ... ON CONFLICT (scope, key) DO UPDATE ... WHERE`` it
   expired, taking it over in place). The re-read of step 3 finds both in the
   same statement.

Under REPEATABLE READ or SERIALIZABLE (a DATABASES ``isolation_level``, or
``ATOMIC_REQUESTS`` whose snapshot was taken at an earlier query) step 3
cannot see a commit made after the transaction's snapshot, and a view could
run twice. There the function keeps version 1's steps: it inserts the
in-flight row before the view, so the unique index makes a late duplicate
meet the committed row (and the store answers "in use"), and returns its id.

Version 1 stays in the database: during a rolling deploy old code calls it
while new code calls this one. Both take the same advisory lock (the store
computes the same lock id), so of an old and a new claimant only one runs;
the unique constraint on (scope, key) still guards the rest.
"""

from typing import Any

from django.db import migrations

FUNCTION = "django_idempotency_claim_v2"

CREATE = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(
    p_scope varchar, p_key varchar, p_fingerprint varchar, p_method varchar,
    p_path text, p_state varchar, p_now timestamptz, p_expires timestamptz,
    p_lock bigint
)
RETURNS TABLE (
    outcome text, record_id bigint, stored_fingerprint varchar,
    stored_state varchar, stored_status smallint, stored_headers text,
    stored_body bytea
)
LANGUAGE plpgsql VOLATILE
AS $body$
DECLARE
    v_live boolean;
BEGIN
    RETURN QUERY
        SELECT 'existing'::text, NULL::bigint, r.fingerprint, r.state,
               r.response_status, r.response_headers, r.response_body
        FROM django_idempotency_idempotencyrecord AS r
        WHERE r.scope = p_scope AND r.key = p_key AND r.expires_at > p_now;
    IF FOUND THEN
        RETURN;
    END IF;

    IF NOT pg_try_advisory_xact_lock(p_lock) THEN
        RETURN QUERY SELECT 'locked'::text, NULL::bigint, NULL::varchar,
                            NULL::varchar, NULL::smallint, NULL::text, NULL::bytea;
        RETURN;
    END IF;

    IF current_setting('transaction_isolation') = 'read committed' THEN
        -- A new statement, so a new snapshot: sees what the lock's previous
        -- holder committed. Expired records too, to tell finish how to write.
        SELECT r.fingerprint, r.state, r.response_status, r.response_headers,
               r.response_body, r.expires_at > p_now
        INTO stored_fingerprint, stored_state, stored_status, stored_headers,
             stored_body, v_live
        FROM django_idempotency_idempotencyrecord AS r
        WHERE r.scope = p_scope AND r.key = p_key;
        IF NOT FOUND THEN
            outcome := 'claimed';  -- finish inserts
        ELSIF v_live THEN
            outcome := 'existing';
        ELSE
            outcome := 'expired';  -- claimed; finish takes the expired record over
            stored_fingerprint := NULL; stored_state := NULL; stored_status := NULL;
            stored_headers := NULL; stored_body := NULL;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;

    -- REPEATABLE READ or SERIALIZABLE: write first, as version 1 does.
    RETURN QUERY
        INSERT INTO django_idempotency_idempotencyrecord AS r
            (scope, key, fingerprint, method, path, state, response_headers,
             created_at, expires_at)
        VALUES (p_scope, p_key, p_fingerprint, p_method, p_path, p_state, '[]',
                p_now, p_expires)
        ON CONFLICT (scope, key) DO UPDATE SET
            fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method,
            path = EXCLUDED.path, state = EXCLUDED.state, response_status = NULL,
            response_headers = EXCLUDED.response_headers, response_body = NULL,
            created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
        WHERE r.expires_at <= EXCLUDED.created_at
        RETURNING 'claimed'::text, r.id, NULL::varchar, NULL::varchar,
                  NULL::smallint, NULL::text, NULL::bytea;
    IF FOUND THEN
        RETURN;
    END IF;

    RETURN QUERY
        SELECT 'existing'::text, NULL::bigint, r.fingerprint, r.state,
               r.response_status, r.response_headers, r.response_body
        FROM django_idempotency_idempotencyrecord AS r
        WHERE r.scope = p_scope AND r.key = p_key AND r.expires_at > p_now;
END
$body$;
"""

DROP = (
    f"DROP FUNCTION IF EXISTS {FUNCTION}"
    "(varchar, varchar, varchar, varchar, text, varchar, timestamptz, timestamptz, bigint);"
)


class RunSQLOnPostgreSQL(migrations.RunSQL):
    """RunSQL that only PostgreSQL databases run (and ``sqlmigrate`` shows)."""

    def database_forwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, *args)

    def database_backwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, *args)


class Migration(migrations.Migration):
    dependencies = [
        ("django_idempotency", "0004_released_state"),
    ]

    operations = [
        RunSQLOnPostgreSQL(sql=CREATE, reverse_sql=DROP),
    ]
