#!/usr/bin/env python
"""Count the SQL that one first request and one replay send, per configuration.

No timing: each configuration's request goes through Django's test client
against the benchmark database, under two independent counters:

* Django's ``CaptureQueriesContext``: every statement Django executes, sorted
  into the idempotency store's (statements naming its table), the rest
  (the view's INSERT, authentication), and transaction control (SAVEPOINT,
  RELEASE, ROLLBACK TO);
* redis-py's sends of command batches, one round trip each;
* libpq's own protocol trace of the connection, outside Django: every
  statement sent to the server (Query and Parse messages), which also shows
  the BEGIN and COMMIT that psycopg sends for Django's transactions, and the
  round trips (a simple Query, or a Sync that ends a batch of extended-protocol
  messages, one per statement outside pipeline mode).

    python count_queries.py            # all configurations, JSON on stdout
    python count_queries.py --out results/tmp/queries.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from configs import BODY, BY_NAME, CONFIGS, USERS, authorization, write_json  # noqa: E402

STORE_TABLES = re.compile(
    r"django_idempotency_|drf_idempotency_|drf_idempotencykey_", re.IGNORECASE
)
TRANSACTION = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|START TRANSACTION)\b", re.I)


def split_statements(sql: str) -> list[str]:
    """One query's statements: the database store's claim may carry the BEGIN
    before it and its record write the COMMIT after it (psycopg 3)."""
    parts = []
    begin = re.match(r"\s*(BEGIN\b[^;]*);\s*(.*)", sql, re.S)
    if begin:
        parts.append(begin.group(1))
        sql = begin.group(2)
    commit = re.match(r"(.*?);\s*(COMMIT)\s*$", sql, re.S)
    return parts + ([commit.group(1), "COMMIT"] if commit else [sql])


def classify(sql: str) -> str:
    if TRANSACTION.match(sql):
        return "transaction"
    if STORE_TABLES.search(sql):
        return "store"
    return "other"


def _trace_queries(path: str) -> tuple[list[str], int]:
    """The statements that the client sent, read from a libpq trace file, and
    the round trips they took: one per simple Query message and one per Sync
    (extended protocol; in pipeline mode several statements share one Sync)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    # One message per record; a record starts with a timestamp and goes on
    # over the newlines inside its statement.
    records = re.split(r"^(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\t)", text, flags=re.M)
    queries, round_trips = [], 0
    for record in records:
        match = re.match(r"[^\t]*\tF\t\d+\t(Query|Parse|Sync)\b\t?(.*)", record, flags=re.S)
        if not match:
            continue
        kind, body = match.group(1), match.group(2).strip()
        if kind != "Parse":
            round_trips += 1
        if kind != "Sync":
            queries.append(body[body.find('"') + 1 : body.rfind('"')].strip())
    return queries, round_trips


def _count_redis() -> list[int]:
    """Count the writes of command batches to Redis (each one round trip): [count]."""
    calls = [0]
    try:
        from redis.connection import AbstractConnection
    except ImportError:
        return calls
    send = AbstractConnection.send_packed_command

    def counted(self: object, command: object, check_health: bool = True) -> None:
        calls[0] += 1
        send(self, command, check_health)  # type: ignore[arg-type]

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    return calls


def measure(server: str) -> dict[str, object]:
    """Run in a process whose settings are for ``server``; count its configurations."""
    import django

    django.setup()
    from benchproject.auth import ensure_users
    from benchproject.models import Order
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    ensure_users(USERS)
    redis_calls = _count_redis()
    client = Client()

    def post(path: str, key: str, auth: str) -> tuple[int, dict[str, object]]:
        before = Order.objects.count()
        redis_before = redis_calls[0]
        connection.ensure_connection()
        pgconn = connection.connection.pgconn
        with tempfile.NamedTemporaryFile("w+", suffix=".trace") as trace_file:
            pgconn.trace(trace_file.fileno())
            try:
                with CaptureQueriesContext(connection) as captured:
                    response = client.post(
                        path,
                        BODY,
                        content_type="application/json",
                        HTTP_IDEMPOTENCY_KEY=key,
                        HTTP_AUTHORIZATION=auth,
                    )
            finally:
                pgconn.untrace()
            trace_file.flush()
            wire, round_trips = _trace_queries(trace_file.name)
        # Django logs its own BEGIN and COMMIT, also when a statement carried them.
        statements = [
            part
            for q in captured.captured_queries
            for part in split_statements(q["sql"])
            if part == q["sql"] or not TRANSACTION.match(part)
        ]
        wire = [part for query in wire for part in split_statements(query)]
        kinds = [classify(sql) for sql in statements]
        wire_kinds = [classify(sql) for sql in wire]
        return response.status_code, {
            "status": response.status_code,
            "replayed": response.headers.get("Idempotent-Replayed"),
            "view_ran": Order.objects.count() - before,
            "statements": len(statements),
            "store": kinds.count("store"),
            "other": kinds.count("other"),
            "transaction": kinds.count("transaction"),
            "wire_queries": len(wire),
            "wire_round_trips": round_trips,
            "wire_transaction": wire_kinds.count("transaction"),
            "redis_round_trips": redis_calls[0] - redis_before,
            "sql": statements,
            "wire_sql": wire,
        }

    # Warm up: the user cache of the auth class, connection, content types.
    post("/baseline/", str(uuid.uuid4()), authorization(BY_NAME["baseline"], USERS[0]))
    results: dict[str, object] = {}
    for config in CONFIGS:
        if config.server != server or config.mode != "first":
            continue
        if config.missing():
            results[config.name] = {"skipped": config.missing()}
            continue
        # Warm up this configuration first: one-time work (a Lua script loaded
        # into Redis, a lazy import) is not what a request costs.
        auth = authorization(config, USERS[0])
        warm = str(uuid.uuid4())
        post(config.path, warm, auth)
        post(config.path, warm, auth)
        key = str(uuid.uuid4())
        _, first = post(config.path, key, auth)
        results[config.name] = first
        if "-first" in config.name:  # ours-db-first-token's replay: ours-db-replay-token
            _, replay = post(config.path, key, auth)
            results[config.name.replace("-first", "-replay")] = replay
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.server:
        os.environ["BENCH_SERVER"] = args.server
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")
        print(json.dumps(measure(args.server)))
        return
    results: dict[str, object] = {}
    for server in dict.fromkeys(config.server for config in CONFIGS):
        done = subprocess.run(
            [sys.executable, __file__, "--server", server],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            for config in CONFIGS:
                if config.server == server:
                    results[config.name] = {"skipped": f"server {server} failed to start"}
            continue
        results.update(json.loads(done.stdout.strip().splitlines()[-1]))
    ordered = {c.name: results[c.name] for c in CONFIGS if c.name in results}
    write_json(ordered, args.out)


if __name__ == "__main__":
    main()
