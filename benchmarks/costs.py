#!/usr/bin/env python
"""What each step of a first request costs on its own, in microseconds.

profile_view.py counts a whole request; this times the steps that
``@idempotent`` adds, one at a time, each called many times in a loop on the
benchmark's request (its JSON body, its response), so that the table of
docs/performance.rst says which step costs what. A step timed alone runs with
warm caches, so the sum is below what the steps cost inside a request; read
the figures as sizes relative to each other. The database steps need the
benchmark's PostgreSQL (DATABASE_URL, as bench_http.py), the Redis ones only
the package.

    python costs.py
    python costs.py --number 5000
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from configs import BODY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timing")
    args = parser.parse_args()
    os.environ.setdefault("BENCH_SERVER", "db")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")
    import django

    django.setup()
    for name, step in steps():
        # The best of five: the least disturbed by the rest of the machine.
        seconds = min(timeit.repeat(step, number=args.number, repeat=5)) / args.number
        print(f"{name:58s} {seconds * 1e6:7.2f} us", flush=True)


def steps() -> list[tuple[str, Callable[[], Any]]]:
    from django.db import connections, transaction
    from django.http import HttpResponse
    from django.test import RequestFactory
    from django.utils import timezone

    from django_idempotency import encryption, errors, keys, signals
    from django_idempotency.conf import conf
    from django_idempotency.fingerprint import request_fingerprint
    from django_idempotency.responses import stored_response
    from django_idempotency.stores.base import RequestRecord
    from django_idempotency.stores.database import locks, sql
    from django_idempotency.stores.database.store import (
        _COMPLETED,
        DatabaseStore,
        _claim_params,
        _row,
    )
    from django_idempotency.stores.redis.records import COMPLETED, encode

    factory = RequestFactory()
    key = str(uuid.uuid4())
    now = timezone.now()
    record = RequestRecord(
        scope="user:1",
        key=key,
        fingerprint="f" * 64,
        method="POST",
        path="/ours/",
        created_at=now,
        expires_at=now + conf.IDEMPOTENCY_TTL,
    )
    response = HttpResponse(
        b'{"id": 1, "sku": "abc-123", "quantity": 2, "note": "benchmark order"}',
        status=201,
        content_type="application/json",
    )
    response["Vary"] = "Accept"
    response["Allow"] = "POST, OPTIONS"
    stored = stored_response(response)
    # As the store has it (connections[alias]), not the django.db.connection
    # proxy, whose every attribute is a lookup in an asgiref Local.
    connection = connections["default"]
    connection.ensure_connection()
    cursor = connection.connection.cursor()  # psycopg's, client-side binding as Django's
    insert, claim_sql = sql.insert(connection), sql.CLAIM_CALL
    claim = _claim_params(record)
    row = _row(connection, record, _COMPLETED, stored)
    # The body is read once and kept by the request, as in a real request.
    request = factory.post("/ours/", BODY, content_type="application/json")

    def empty_atomic() -> None:
        block = transaction.atomic()
        block.__enter__()
        block.__exit__(None, None, None)

    def signal() -> None:
        signals.notify(signals.claimed, store, None, record)

    def value() -> None:
        encode(COMPLETED, record, stored.body, status=201, headers=stored.headers)

    store = DatabaseStore()
    return [
        ("(reference) Django's atomic(), entered and left, no query", empty_atomic),
        ("fingerprint of the JSON body", lambda: request_fingerprint(request, request)),
        ("request id: req_ and a ULID", lambda: "req_" + errors.new_ulid()),
        ("RequestRecord of the request", lambda: RequestRecord(**record.__dict__)),
        ("digest of (scope, key)", lambda: keys.scoped_key(record.scope, key)),
        ("advisory lock id", lambda: locks.lock_id(record)),
        ("request.idempotency_key", lambda: keys.record_key(record.scope, key, now)),
        ("capture of the response (status, kept headers, body)", lambda: stored_response(response)),
        ("encryption.seal, no keys configured", lambda: encryption.seal(stored, "user:1", key)),
        ("a signal with no receivers", signal),
        (
            "database: the record's 12 parameters",
            lambda: _row(connection, record, _COMPLETED, stored),
        ),
        (
            "database: binding the claim's 9 parameters (psycopg)",
            lambda: cursor.mogrify(claim_sql, claim),
        ),
        (
            "database: binding the record's 12 parameters (psycopg)",
            lambda: cursor.mogrify(insert, row),
        ),
        ("Redis: the completed value (JSON head + body)", value),
    ]


if __name__ == "__main__":
    main()
