"""Fill the idempotency record table with millions of rows, fast, on the server side.

Shared by growth.py (live records) and purge.py (expired ones). One
``INSERT ... SELECT generate_series`` with the table's secondary indexes and
unique constraint dropped, then rebuilt: a B-tree built once from sorted input
takes seconds where ten million random inserts into it (the UUID keys) take
many minutes once the indexes outgrow shared buffers. The indexes and
constraints come back exactly as they were (their definitions are read from the
catalog first), so whatever a migration adds is rebuilt too; the table is
VACUUM ANALYZEd after, as it would be in production once autovacuum has run.

Never point this at real data: it is for benchmark databases only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# One realistic record: several users' scopes, a UUID key, its digest, a SHA-256 fingerprint,
# the headers and the small JSON body of a 201. %(...)s are the caller's
# parameters; ``g`` is the series number.
RECORD_SELECT = """
    SELECT r.scope, r.key,
           encode(sha256(convert_to(r.scope, 'UTF8') || decode('00', 'hex')
                         || convert_to(r.key, 'UTF8')), 'hex'),
           r.fingerprint, 'POST', '/v1/orders/', 'completed', 201, r.headers, r.body,
           r.created_at, r.expires_at
    FROM (
        SELECT 'user:' || (g %% %(users)s) AS scope, {key} AS key,
               encode(sha256(int8send(g)), 'hex') AS fingerprint,
               '[["Content-Type", "application/json"], ["Location", "/v1/orders/'
                   || g || '"]]' AS headers,
               convert_to('{{"id": ' || g || ', "sku": "abc-123", "quantity": 2, '
                          || '"note": "benchmark order"}}', 'UTF8') AS body,
               now() + %(created)s::interval - (g %% 3600) * interval '1 second' AS created_at,
               now() + %(expires)s::interval - (g %% 3600) * interval '1 second' AS expires_at
        FROM generate_series(%(start)s, %(stop)s) AS g
    ) AS r
"""
# The digest is keys.scoped_key() in SQL: SHA-256 of scope, NUL, key.
COLUMNS = (
    "scope, key, digest, fingerprint, method, path, state, response_status, "
    "response_headers, response_body, created_at, expires_at"
)


def record_table() -> str:
    from django.db import connection

    from django_idempotency.models import IdempotencyRecord

    return str(connection.ops.quote_name(IdempotencyRecord._meta.db_table))


@dataclass(frozen=True)
class Batch:
    """``rows`` records numbered from ``start``.

    ``key`` is an SQL expression of ``g`` (default: a random UUID, as clients
    send); ``created`` and ``expires`` are intervals from now, each record's
    spread back over an hour.
    """

    rows: int
    start: int = 1
    key: str = "gen_random_uuid()::text"
    users: int = 5000
    created: str = "-1 hour"
    expires: str = "23 hours"


def bulk_insert(*batches: Batch) -> float:
    """Insert the batches with the indexes rebuilt once; returns the seconds it took."""
    from django.db import connection, transaction

    table = record_table()
    started = time.perf_counter()
    # One transaction: a failed fill leaves the table with its indexes and
    # constraints, not without them for every later run.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'u'",
            [table],
        )
        constraints: list[tuple[str, str]] = cursor.fetchall()
        cursor.execute(
            "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = %s::regclass AND NOT x.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
            [table],
        )
        indexes: list[tuple[str, str]] = cursor.fetchall()
        # The index builds sort in memory, not on disk.
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for name, _ in constraints:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        for batch in batches:
            params: dict[str, Any] = {
                "users": batch.users,
                "created": batch.created,
                "expires": batch.expires,
                "start": batch.start,
                "stop": batch.start + batch.rows - 1,
            }
            cursor.execute(
                f"INSERT INTO {table} ({COLUMNS}) " + RECORD_SELECT.format(key=batch.key), params
            )
        for name, definition in constraints:
            cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            cursor.execute(definition)
    with connection.cursor() as cursor:  # VACUUM cannot run in a transaction
        cursor.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - started


def table_size() -> dict[str, int]:
    """Rows, and bytes of the table with its TOAST and indexes (what the disk holds)."""
    from django.db import connection

    table = record_table()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), pg_total_relation_size(%s::regclass), "
            f"pg_relation_size(%s::regclass), pg_indexes_size(%s::regclass) FROM {table}",
            [table, table, table],
        )
        rows, total, heap, indexes = cursor.fetchone()
    return {"rows": rows, "total_bytes": total, "heap_bytes": heap, "index_bytes": indexes}
