"""The SQL that the database store sends, by vendor (docs/databases.rst
explains each claim). Migration 0002 creates the PostgreSQL claim function
from this text, so the store and the schema cannot disagree about it."""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

TABLE = "django_idempotency_idempotencyrecord"

#: The PostgreSQL function that claims a key or fetches its record.
CLAIM_FUNCTION = "django_idempotency_claim"
CLAIM_SIGNATURE = (
    f"{CLAIM_FUNCTION}(varchar, varchar, varchar, varchar, text, varchar, "
    "timestamptz, timestamptz, bigint)"
)
# Parameters: scope, key, fingerprint, method, path, state, now, expires, lock.
CLAIM_CALL = f"SELECT * FROM {CLAIM_FUNCTION}(%s, %s, %s, %s, %s, %s, %s, %s, %s)"

# The columns of a record, in the order that insert() and store._row() give them.
COLUMNS = (
    "scope", "key", "digest", "fingerprint", "method", "path", "state",
    "response_status", "response_headers", "response_body", "created_at", "expires_at",
)  # fmt: skip

# An expired record is taken over in place: it no longer counts, even before
# the purge deletes it.
TAKE_OVER = """ON CONFLICT (digest) DO UPDATE SET
    fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method, path = EXCLUDED.path,
    state = EXCLUDED.state, response_status = EXCLUDED.response_status,
    response_headers = EXCLUDED.response_headers, response_body = EXCLUDED.response_body,
    created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
WHERE {table}.expires_at <= EXCLUDED.created_at"""


# insert()'s texts by vendor, head and tail: built once, sent on every request.
_INSERTS: dict[tuple[str, str, str], str] = {}


def insert(connection: BaseDatabaseWrapper, head: str = "INSERT", tail: str = "") -> str:
    """INSERT of one record (parameters: store._row()), with ``tail`` after VALUES."""
    text = _INSERTS.get((connection.vendor, head, tail))
    if text is None:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(column) for column in COLUMNS)
        places = ", ".join(["%s"] * len(COLUMNS))
        text = f"{head} INTO {quote(TABLE)} ({columns}) VALUES ({places}) {tail}"
        _INSERTS[connection.vendor, head, tail] = text
    return text


def take_over(connection: BaseDatabaseWrapper) -> str:
    return TAKE_OVER.format(table=connection.ops.quote_name(TABLE)) + " RETURNING id"


# keys.scoped_key in SQL; decode(): a NUL byte whatever standard_conforming_strings says.
DIGEST = (
    "encode(sha256(convert_to(p_scope, 'UTF8') || decode('00', 'hex') "
    "|| convert_to(p_key, 'UTF8')), 'hex')"
)
_FIND = f"""SELECT 'existing'::text, NULL::bigint, r.fingerprint, r.state,
               r.response_status, r.response_headers, r.response_body
        FROM {TABLE} AS r WHERE r.digest = v_digest AND r.expires_at > p_now"""

# A function plans its statements once per connection, where one statement
# doing the same would be planned on every request. Its steps are explained
# in docs/design.rst, "The claim on PostgreSQL".
CREATE_CLAIM_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {CLAIM_FUNCTION}(
    p_scope varchar, p_key varchar, p_fingerprint varchar, p_method varchar,
    p_path text, p_state varchar, p_now timestamptz, p_expires timestamptz, p_lock bigint
)
RETURNS TABLE (
    outcome text, record_id bigint, stored_fingerprint varchar, stored_state varchar,
    stored_status smallint, stored_headers text, stored_body bytea
)
LANGUAGE plpgsql VOLATILE
AS $body$
DECLARE
    v_live boolean;
    v_digest varchar := {DIGEST};
BEGIN
    RETURN QUERY {_FIND};
    IF FOUND THEN
        RETURN;
    END IF;

    IF NOT pg_try_advisory_xact_lock(p_lock) THEN
        RETURN QUERY SELECT 'locked'::text, NULL::bigint, NULL::varchar,
                            NULL::varchar, NULL::smallint, NULL::text, NULL::bytea;
        RETURN;
    END IF;

    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT r.fingerprint, r.state, r.response_status, r.response_headers,
               r.response_body, r.expires_at > p_now
        INTO stored_fingerprint, stored_state, stored_status, stored_headers,
             stored_body, v_live
        FROM {TABLE} AS r WHERE r.digest = v_digest;
        IF NOT FOUND THEN
            outcome := 'claimed';
        ELSIF v_live THEN
            outcome := 'existing';
        ELSE
            outcome := 'expired';
            stored_fingerprint := NULL; stored_state := NULL; stored_status := NULL;
            stored_headers := NULL; stored_body := NULL;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;

    RETURN QUERY
        INSERT INTO {TABLE} ({", ".join(COLUMNS)})
        VALUES (p_scope, p_key, v_digest, p_fingerprint, p_method, p_path, p_state,
                NULL, '[]', NULL, p_now, p_expires)
        {TAKE_OVER.format(table=TABLE)}
        RETURNING 'claimed'::text, {TABLE}.id, NULL::varchar, NULL::varchar,
                  NULL::smallint, NULL::text, NULL::bytea;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY {_FIND};
END
$body$;
"""
DROP_CLAIM_FUNCTION = f"DROP FUNCTION IF EXISTS {CLAIM_SIGNATURE};"

# LZ4 compresses and decompresses large bodies faster than PostgreSQL's pglz
# (docs/performance.rst). PostgreSQL 14 and a server built with LZ4 only;
# elsewhere the column keeps the server's default.
BODY_LZ4 = f"""
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE {TABLE} ALTER COLUMN response_body SET COMPRESSION lz4';
    END IF;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'response_body keeps the server''s default compression: %', SQLERRM;
END
$$;
"""
FINISH = (
    "UPDATE {table} SET state = %s, response_status = %s, response_headers = %s, "
    "response_body = %s WHERE id = %s"
)

# PostgreSQL purge batch. MATERIALIZED: the batch is chosen once; as a plain
# IN (subquery) the planner may rescan it, and with ties in expires_at pick
# other rows, deleting more than a batch.
PURGE_BATCH = (
    "WITH batch AS MATERIALIZED (SELECT id FROM {table} WHERE {condition}"
    " ORDER BY expires_at LIMIT %(size)s FOR UPDATE SKIP LOCKED)"
    " DELETE FROM {table} USING batch WHERE {table}.id = batch.id AND {condition}"
)

# The store's claims as PostgreSQL sees them: bigint advisory locks (objsubid 1)
# granted to other sessions of this database. Another application's bigint
# advisory locks there look the same.
HELD_CLAIMS = """
SELECT activity.xact_start
FROM pg_locks AS locks
JOIN pg_stat_activity AS activity ON activity.pid = locks.pid
WHERE locks.locktype = 'advisory' AND locks.objsubid = 1 AND locks.granted
  AND locks.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND locks.pid <> pg_backend_pid()
"""
