#!/usr/bin/env python
"""How cost grows: live records in the table, response body size, connections, a big purge.

Measured with bench_http.py's machinery and honesty rules (every run checked:
only 2xx, a first run inserts one row per request and a replay none; each run's
ratio is to the baseline runs just before and after it; medians over rounds),
in four parts:

* rows: ``@idempotent`` on the database store, first request and replay, with
  0, 1 million and 10 million live records already in the table (filled on the
  server side by fill.py: 1M, then 9M more on top, the indexes rebuilt once per
  fill), against the undecorated view; the table's bytes per row at each point;
* bodies: the same view answering 1 KB, 100 KB and 1 MB, first and replay, on
  both stores, against the undecorated view answering the same body;
* connections: 4, 16 and 64 concurrent connections (wrk -c), first and replay,
  both stores, against the baseline at the same connections;
* purge: purge.py with ``--purge-rows`` expired rows (10 million in the full
  run), in a database of its own.

Its databases (``<PG_DB_NAME>_growth``, ``<PG_DB_NAME>_growth_purge``) are
dropped and created anew at the start, so nothing depends on an earlier run,
and dropped again at the end (ten million rows take gigabytes).

    python growth.py --rows 0 1000000 10000000 --rounds 3 --duration 2 \\
        --purge-rows 10000000 --out results/tmp/growth.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from configs import BY_NAME, Config, write_json  # noqa: E402

BODY_SIZES = [1024, 100 * 1024, 1024 * 1024]
CONNECTIONS = [4, 16, 64]
STORES = {"db": "database", "redis": "Redis"}


def log(message: str) -> None:
    print(f"[growth] {message}", file=sys.stderr, flush=True)


def size_tag(size: int) -> str:
    return f"{size // (1024 * 1024)}MB" if size >= 1024 * 1024 else f"{size // 1024}KB"


def database_url(name: str) -> str:
    url = urlsplit(os.environ["DATABASE_URL"])
    return url._replace(path=f"/{name}").geturl()


def recreate_database(url: str, *, create: bool = True) -> None:
    """Drop the database of ``url`` (its leftovers with it) and, unless told not to, create it."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        # Not WITH (FORCE): that would need the right to end autovacuum's workers,
        # which DROP DATABASE ends by itself. This run's own sessions may linger.
        for attempt in range(20):
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND usename = current_user AND pid <> pg_backend_pid()",
                [name],
            )
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_quietly(url: str) -> None:
    """Drop a database at the end of a run; a failure costs disk, not the results."""
    try:
        recreate_database(url, create=False)
    except Exception as exc:
        log(f"WARNING: could not drop {urlsplit(url).path.lstrip('/')}: {exc}")


def body_configs(size: int) -> tuple[Config, list[Config]]:
    """The baseline answering ``size`` bytes, and @idempotent on both stores answering the same."""
    tag = size_tag(size)
    baseline = Config(
        f"baseline-{tag}",
        f"undecorated view, {tag} body",
        "db",
        f"/sized/{size}/",
        "first",
        baseline=f"baseline-{tag}",
    )
    others = [
        Config(
            f"ours-{server}-{mode}-{tag}",
            f"@idempotent, {STORES[server]}, {mode}, {tag} body",
            server,
            f"/ours-sized/{size}/",
            mode,
            needs="django_idempotency.stores.redis" if server == "redis" else None,
            baseline=baseline.name,
        )
        for server in STORES
        for mode in ("first", "replay")
    ]
    return baseline, others


def summarize(
    configs: list[Config], rounds: list[dict[str, dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Each configuration's medians over the rounds (as bench_http.py's summary)."""
    summary: dict[str, dict[str, Any]] = {}
    for config in configs:
        per_round = [r[config.name] for r in rounds]
        summary[config.name] = {
            "label": config.label,
            "store": None if config.is_baseline else config.server,
            "mode": None if config.is_baseline else config.mode,
            "rps": statistics.median(float(r["rps"]) for r in per_round),
            "ratio": statistics.median(float(r["ratio"]) for r in per_round),
            "ratios": [round(float(r["ratio"]), 3) for r in per_round],
            "p99_ms": statistics.median(int(r["p99_us"]) for r in per_round) / 1000,
            "app_cpu_ms": statistics.median(float(r["app_cpu_ms"]) for r in per_round),
            "db_cpu_ms": statistics.median(float(r["db_cpu_ms"]) for r in per_round),
            "redis_cpu_ms": statistics.median(float(r["redis_cpu_ms"]) for r in per_round),
            "cpu_ms": statistics.median(float(r["cpu_ms"]) for r in per_round),
            "problems": [p for r in per_round for p in r["problems"]],
        }
    return summary


class RedisKeys:
    """Live records in the Redis store: ``count`` keys named as the store names them.

    Each holds a copy of a value that the store itself wrote during an earlier
    run (a real completed record), and expires by itself within the hour; the
    shared Redis is never flushed, so ``remove`` deletes exactly these keys.
    """

    TTL_MS = 3_600_000

    def __init__(self) -> None:
        from django.conf import settings
        from django.core.cache import caches
        from django_redis import get_redis_connection

        self.cache = caches[settings.IDEMPOTENCY_CACHE]
        self.client = get_redis_connection(settings.IDEMPOTENCY_CACHE, write=True)
        self.count = 0

    def name(self, number: int) -> str:
        digest = hashlib.sha256(f"growth-{number}".encode()).hexdigest()
        return str(self.cache.make_key("idempotency:" + digest))

    def template(self) -> bytes:
        pattern = str(self.cache.make_key("idempotency:*"))
        small = None
        for number, key in enumerate(self.client.scan_iter(match=pattern, count=1000)):
            value = self.client.get(key)
            # A record of the 70-byte answer (not of a sized one), completed if any.
            if value and len(value) < 1024:
                if b'"completed"' in value:
                    return bytes(value)
                small = small or bytes(value)
            if number > 10_000 and small:
                break
        if small is None:
            raise RuntimeError("no record of the Redis store to copy")
        return small

    def fill(self, total: int) -> dict[str, Any]:
        value = self.template()
        used = int(self.client.info("memory")["used_memory"])
        started = time.perf_counter()
        pipe = self.client.pipeline(transaction=False)
        for number in range(self.count, total):
            pipe.set(self.name(number), value, px=self.TTL_MS)
            if number % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
        added, self.count = total - self.count, total
        grown = int(self.client.info("memory")["used_memory"]) - used
        return {
            "redis_keys": total,
            "redis_fill_s": round(time.perf_counter() - started, 1),
            "redis_value_bytes": len(value),
            "redis_bytes_per_key": round(grown / added) if added >= 10_000 else None,
        }

    def remove(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for number in range(self.count):
            pipe.unlink(self.name(number))
            if number % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
        self.count = 0


class Measure:
    """Groups of runs against their baseline, on the servers that growth.py started."""

    def __init__(self, servers: dict[str, Any], args: argparse.Namespace) -> None:
        self.servers, self.args = servers, args
        self.warm: set[str] = set()

    def __call__(
        self, baseline: Config, others: list[Config], connections: int | None = None
    ) -> dict[str, dict[str, Any]]:
        from bench_http import run_group, wrk_run

        others = [c for c in others if c.server in self.servers and c.missing() is None]
        threads = self.args.threads
        for config in [baseline, *others]:
            # Imports, connections, caches: once per server and kind of run is enough
            # (the sized views are the same code on another path).
            warm = f"{config.server} {config.is_baseline} {config.mode}"
            if warm not in self.warm:
                wrk_run(config, self.servers[config.server], 1, threads)
                self.warm.add(warm)
        rounds = []
        for number in range(self.args.rounds):
            results = run_group(
                baseline, others, number, self.servers, self.args.duration, threads, connections
            )
            for name, result in results.items():
                for problem in result["problems"]:
                    log(f"round {number + 1} {name}: {problem}")
            rounds.append(results)
        summary = summarize([baseline, *others], rounds)
        log(
            ", ".join(
                f"{name} {r['rps']:.0f}/s ({r['ratio']:.2f}, p99 {r['p99_ms']:.1f} ms)"
                for name, r in summary.items()
            )
        )
        return summary


def measure_http(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")
    os.environ["BENCH_SERVER"] = "db"
    import django

    django.setup()
    from bench_http import Server, free_port, prepare_database
    from fill import Batch, bulk_insert, table_size

    prepare_database()
    servers: dict[str, Server] = {}
    port = int(os.environ.get("BENCH_PORT", "18400")) + 50
    kinds = ["db"] + (["redis"] if os.environ.get("REDIS_URL") else [])
    data: dict[str, Any] = {"rows": [], "bodies": [], "connections": []}
    redis_keys: RedisKeys | None = None
    try:
        for kind in kinds:
            port = free_port(port)
            servers[kind] = Server(kind, port, args.workers)
            port += 1
        for server in servers.values():
            server.wait_ready()
        measure = Measure(servers, args)
        baseline = BY_NAME["baseline"]
        db_pair = [BY_NAME["ours-db-first"], BY_NAME["ours-db-replay"]]

        if "redis" in servers:
            redis_keys = RedisKeys()
        redis_pair = [BY_NAME["ours-redis-first"], BY_NAME["ours-redis-replay"]]

        def rows_point(target: int, fill_s: float | None) -> None:
            started = time.perf_counter()
            # Redis: as many live keys as the table has rows, up to --redis-rows.
            point: dict[str, Any] = {}
            others = db_pair
            if redis_keys and target <= args.redis_rows:
                if target:
                    log(f"rows: {target:,} live keys in Redis")
                    point = redis_keys.fill(target)
                others = db_pair + redis_pair
            results = measure(baseline, others)
            size = table_size()
            data["rows"].append(
                {
                    **point,
                    "live_rows": target,
                    "fill_s": None if fill_s is None else round(fill_s, 1),
                    **size,
                    "bytes_per_row": round(size["total_bytes"] / size["rows"])
                    if size["rows"] >= 10_000
                    else None,
                    "results": results,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )

        levels = sorted(set(args.rows))
        filled = 0
        if levels and levels[0] == 0:
            log("rows: 0 live records")
            rows_point(0, None)
            levels = levels[1:]
        for size in BODY_SIZES:
            log(f"bodies: {size_tag(size)}")
            data["bodies"].append({"bytes": size, "results": measure(*body_configs(size))})
        pairs = [
            BY_NAME[name]
            for name in ("ours-db-first", "ours-db-replay", "ours-redis-first", "ours-redis-replay")
        ]
        for connections in CONNECTIONS:
            log(f"connections: {connections}")
            data["connections"].append(
                {"connections": connections, "results": measure(baseline, pairs, connections)}
            )
        for level in levels:
            log(f"rows: filling to {level:,} live records")
            seconds = bulk_insert(Batch(level - filled, start=filled + 1))
            filled = level
            log(f"rows: {level:,} live records (filled in {seconds:.0f} s)")
            rows_point(level, seconds)
    finally:
        for server in servers.values():
            server.stop()
        if redis_keys:
            redis_keys.remove()
        from django.db import connections as db_connections

        db_connections.close_all()
    return data


def measure_purge(rows: int, out: Path) -> dict[str, Any] | None:
    """purge.py on ``rows`` expired rows, in a database of its own (dropped after)."""
    url = database_url(os.environ.get("PG_DB_NAME", "bench") + "_growth_purge")
    recreate_database(url)
    out.unlink(missing_ok=True)
    try:
        done = subprocess.run(
            [sys.executable, str(HERE / "purge.py"), "--rows", str(rows), "--out", str(out)],
            env=dict(os.environ, DATABASE_URL=url),
            check=False,
        )
    finally:
        drop_quietly(url)
    # purge.py exits 1 when its 1M-row targets are missed; a missing result is a failure.
    if not out.exists():
        raise RuntimeError(f"purge.py failed ({done.returncode}) and wrote no result")
    import json

    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="*", default=[0, 1_000_000, 10_000_000], help="live records"
    )
    parser.add_argument(
        "--redis-rows",
        type=int,
        default=1_000_000,
        help="the points with at most this many records run on Redis too, with as many keys",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=4, help="wrk threads (= connections)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server")
    parser.add_argument("--purge-rows", type=int, default=10_000_000, help="0: no purge")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    own = database_url(os.environ.get("PG_DB_NAME", "bench") + "_growth")
    recreate_database(own)
    os.environ["DATABASE_URL"] = own
    try:
        data = measure_http(args)
    finally:
        drop_quietly(own)
    data["http_seconds"] = round(time.perf_counter() - started, 1)
    if args.purge_rows:
        log(f"purge of {args.purge_rows:,} expired rows")
        purge_out = HERE / "results" / "tmp" / "purge-growth.json"
        data["purge"] = measure_purge(args.purge_rows, purge_out)
    data["settings"] = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "wrk_threads": args.threads,
        "gunicorn_workers": args.workers,
        "rows": sorted(set(args.rows)),
        "purge_rows": args.purge_rows,
    }
    data["seconds"] = round(time.perf_counter() - started, 1)
    write_json(data, args.out)
    log(f"done in {data['seconds']:.0f} s")


if __name__ == "__main__":
    main()
