#!/usr/bin/env python
"""WAL that one first request's claim + finish writes, per design: load-independent.

Each statement runs under EXPLAIN (ANALYZE, WAL), which reports the WAL
records and bytes that it wrote itself (not the server's, so other sessions do
not count), on a database that ``manage.py migrate`` prepared:

    python pgbench/wal_per_request.py postgres://user:pw@host/db -n 300

Designs: v1 (migration 0003: the claim INSERTs an in-flight row, finish
UPDATEs it), v2 (migration 0005: the claim writes nothing, finish INSERTs),
v2-on-conflict (the same with INSERT ... ON CONFLICT, as finish sends when an
expired record is there to take over).
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from typing import Any

import psycopg

BODY = b'{"id": 1, "sku": "abc-123", "quantity": 2, "note": "benchmark order"}'
TABLE = "django_idempotency_idempotencyrecord"
COLUMNS = (
    "scope, key, fingerprint, method, path, state, response_status, response_headers, "
    "response_body, created_at, expires_at"
)
VALUES = (
    "('user:1', %s, %s, 'POST', '/ours/', 'completed', 201, '[]', %s, now(), "
    "now() + interval '1 day')"
)
INSERT = f"INSERT INTO {TABLE} AS r ({COLUMNS}) VALUES {VALUES}"
ON_CONFLICT = (
    " ON CONFLICT (scope, key) DO UPDATE SET state = EXCLUDED.state"
    " WHERE r.expires_at <= EXCLUDED.created_at RETURNING r.id"
)


def explain(conn: psycopg.Connection[Any], sql: str, params: list[Any]) -> tuple[int, int]:
    plan = conn.execute("EXPLAIN (ANALYZE, WAL, FORMAT JSON) " + sql, params).fetchone()[0][0]
    return plan["Plan"].get("WAL Records", 0), plan["Plan"].get("WAL Bytes", 0)


def one(conn: psycopg.Connection[Any], design: str) -> tuple[int, int]:
    key = "wal-" + uuid.uuid4().hex
    lock = int.from_bytes(uuid.uuid4().bytes[:8], "big", signed=True)
    function = "django_idempotency_claim_v1" if design == "v1" else "django_idempotency_claim"
    claim = explain(
        conn,
        f"SELECT * FROM {function}('user:1', %s, %s, 'POST', '/ours/', 'in_flight', now(), "
        "now() + interval '1 day', %s)",
        [key, "f" * 64, lock],
    )
    if design == "v1":
        (pk,) = conn.execute(f"SELECT id FROM {TABLE} WHERE key = %s", [key]).fetchone()
        finish = explain(
            conn,
            f"UPDATE {TABLE} SET state = 'completed', response_status = 201, "
            "response_headers = '[]', response_body = %s WHERE id = %s",
            [BODY, pk],
        )
    else:
        sql = INSERT + (ON_CONFLICT if design == "v2-on-conflict" else "")
        finish = explain(conn, sql, [key, "f" * 64, BODY])
    conn.commit()
    return claim[0] + finish[0], claim[1] + finish[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()
    with psycopg.connect(args.url) as conn:
        for design in ("v1", "v2", "v2-on-conflict") * 2:
            runs = [one(conn, design) for _ in range(args.n)]
            records = statistics.mean(r for r, _ in runs)
            size = statistics.median(b for _, b in runs)
            print(f"{design:15s} {records:5.2f} WAL records, {size:6.0f} WAL bytes (median)")
        conn.execute(f"DELETE FROM {TABLE} WHERE key LIKE 'wal-%%'")
        conn.commit()


if __name__ == "__main__":
    main()
