#!/usr/bin/env python
"""Throughput of a guarded ``async def`` view on PostgreSQL under uvicorn, with
Django's connection pool off and on, next to the same view as a sync view.

One uvicorn process (one worker: the machine's other core runs the client and
PostgreSQL) serves benchproject with ``BENCH_SERVER=asgi``; ``BENCH_DB_POOL=1``
turns on Django 5.1+'s psycopg pool (``DATABASES[...]["OPTIONS"]["pool"]``).
For each pool setting, each view gets one run of ``--duration`` seconds per
round, in an order that rotates from round to round; the result is the median
over the rounds. The client is Python threads, each keeping one HTTP/1.1
connection open and posting a new key per request.

Every run is checked: only 201 answers, and one new row per request. Each run
also counts the PostgreSQL sessions opened (``pg_stat_database.sessions``) per
request: without a pool, Django's ASGI handler connects anew for every request.

    python bench_asgi.py --rounds 3 --duration 8 --out results/asgi.json

The database (``bench_asgi`` on the local PostgreSQL, or ``DATABASE_URL``) is
created if it is missing and emptied before each run.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from configs import BODY, USERS, write_json  # noqa: E402

DATABASE_URL = os.environ.setdefault(
    "DATABASE_URL", "postgres://idempotency:idempotency@127.0.0.1:5432/bench_asgi"
)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")

VIEWS = {
    "async-plain": "/asgi/async-plain/",
    "async-ours": "/asgi/async-ours/",
    "sync-ours": "/asgi/sync-ours/",
}


def log(message: str) -> None:
    print(f"[bench_asgi] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_database() -> None:
    import psycopg

    parts = urlsplit(DATABASE_URL)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def prepare() -> None:
    import django

    django.setup()
    from benchproject.auth import ensure_users
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    ensure_users(USERS)


def empty_tables() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE benchproject_order, django_idempotency_idempotencyrecord")


def order_count() -> int:
    from benchproject.models import Order

    return Order.objects.count()


def sessions_opened() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


class Server:
    def __init__(self, pool: bool) -> None:
        self.port = free_port()
        env = dict(os.environ, BENCH_SERVER="asgi", BENCH_DB_POOL="1" if pool else "0")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "benchproject.asgi:application",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--log-level", "warning", "--no-access-log"],
            cwd=HERE, env=env, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def load(port: int, path: str, seconds: float, clients: int) -> tuple[int, dict[int, int]]:
    """Requests answered in ``seconds`` by ``clients`` keep-alive connections, and
    the count of each status."""
    stop_at = time.monotonic() + seconds
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client(index: int) -> None:
        user = USERS[index % len(USERS)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: dict[int, int] = {}
        while time.monotonic() < stop_at:
            conn.request("POST", path, body=BODY, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {user}",
                "Idempotency-Key": uuid.uuid4().hex,
            })  # fmt: skip
            response = conn.getresponse()
            response.read()
            mine[response.status] = mine.get(response.status, 0) + 1
        conn.close()
        with lock:
            for status, count in mine.items():
                statuses[status] = statuses.get(status, 0) + count

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(statuses.values()), statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import django

    load_at_start = os.getloadavg()[0]
    ensure_database()
    prepare()
    pools = [False, True] if django.VERSION >= (5, 1) else [False]
    if django.VERSION < (5, 1):
        log(f"Django {django.get_version()} has no connection pool: pool on is skipped")
    runs: dict[str, list[dict[str, float]]] = {}
    names = list(VIEWS)
    for round_ in range(args.rounds):
        for pool in pools:
            server = Server(pool)
            try:
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    empty_tables()
                    load(server.port, VIEWS[name], 1, args.clients)  # warm up
                    empty_tables()
                    sessions, started = sessions_opened(), time.monotonic()
                    answered, statuses = load(server.port, VIEWS[name], args.duration, args.clients)
                    elapsed = time.monotonic() - started
                    opened = sessions_opened() - sessions
                    assert set(statuses) == {201}, f"{name}: answers {statuses}"
                    rows = order_count()
                    assert rows == answered, f"{name}: {answered} answers but {rows} rows"
                    label = f"{name}, pool {'on' if pool else 'off'}"
                    rate = answered / elapsed
                    runs.setdefault(label, []).append(
                        {"rate": rate, "sessions_per_request": opened / answered}
                    )
                    log(
                        f"round {round_ + 1}: {label}: {rate:.0f} req/s, "
                        f"{opened / answered:.2f} sessions per request"
                    )
            finally:
                server.stop()

    results = {
        label: {
            "requests_per_second": round(statistics.median(r["rate"] for r in rs), 1),
            "sessions_per_request": round(
                statistics.median(r["sessions_per_request"] for r in rs), 3
            ),
            "rounds": len(rs),
        }
        for label, rs in runs.items()
    }
    meta = {
        "django": django.get_version(),
        "uvicorn": __import__("uvicorn").__version__,
        "clients": args.clients,
        "duration": args.duration,
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    print(f"{'configuration':<28} {'req/s':>8} {'sessions/req':>13}")
    for label, result in results.items():
        print(
            f"{label:<28} {result['requests_per_second']:>8} {result['sessions_per_request']:>13}"
        )
    write_json({"meta": meta, "results": results}, args.out)


if __name__ == "__main__":
    main()
