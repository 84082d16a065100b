"""Throughput of guarded requests behind PgBouncer in transaction mode, by pool size.

On the database store a guarded request holds one server connection from its
claim until its response is stored, external calls included (docs/scaling.rst,
"Pool sizing behind PgBouncer"). This measures what that means: the test app
under gunicorn (2 workers x 4 threads, so 8 requests at once), CLIENTS clients
posting new keys for DURATION seconds, every view holding its transaction for
HOLD seconds as a call to a payment provider would, through PgBouncer pools of
several sizes. It starts its own PostgreSQL and PgBouncer on free ports.

    .venv/bin/python benchmarks/pgbouncer_pool.py [--duration 8] [--hold 0.1]

Prints a table and writes results/pgbouncer_pool.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from tests.servers import Server, gunicorn, pgbouncer, postgres_cluster  # noqa: E402

CLIENTS = 8


def migrate(url: str) -> None:
    def django(*args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "django", *args, "--settings", "tests.settings"],
            env=dict(os.environ, DATABASE_URL=url, PYTHONPATH=str(ROOT)),
            check=True,
            capture_output=True,
            cwd=ROOT,
        )

    django("migrate", "--no-input", "-v", "0")
    django(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('alice', password='alice-pw')",
    )


def measure(server: Server, duration: float, hold: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def client() -> None:
        nonlocal errors
        while time.monotonic() < stop:
            key = uuid.uuid4().hex
            started = time.monotonic()
            reply = server.request(
                "/t/widgets",
                json.dumps({"name": key}).encode(),
                headers={"Idempotency-Key": key, "X-Test-Delay": str(hold)},
                timeout=120,
            )
            with lock:
                if reply.status == 201:
                    latencies.append(time.monotonic() - started)
                else:
                    errors += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {
        "requests_per_second": round(len(latencies) / duration, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--hold", type=float, default=0.1)
    parser.add_argument("--pools", default="2,4,8")
    args = parser.parse_args()
    results = []
    with postgres_cluster() as cluster:
        url = cluster.create_database("pool")
        migrate(url)
        for size in [int(size) for size in args.pools.split(",")]:
            with (
                pgbouncer(cluster, pool_mode="transaction", pool_size=size) as bouncer,
                gunicorn(workers=2, database=bouncer.url("pool")) as server,
            ):
                measure(server, 1.0, args.hold)  # warm up
                result = {"pool_size": size, **measure(server, args.duration, args.hold)}
            results.append(result)
            print(result, flush=True)
    print(
        f"\n{CLIENTS} clients, views holding {args.hold * 1000:.0f} ms, PgBouncer transaction mode"
    )
    print("pool  req/s   p50 ms  p95 ms  errors")
    for r in results:
        print(
            f"{r['pool_size']:>4}  {r['requests_per_second']:>5}  {r['p50_ms']:>7}  "
            f"{r['p95_ms']:>6}  {r['errors']:>6}"
        )
    out = HERE / "results" / "pgbouncer_pool.json"
    out.write_text(
        json.dumps(
            {
                "clients": CLIENTS,
                "hold_seconds": args.hold,
                "duration_seconds": args.duration,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
