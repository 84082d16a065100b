#!/usr/bin/env python
"""Throughput of the benchmark view under each configuration, with wrk on loopback.

Starts one gunicorn per server kind (see benchproject/settings.py), then runs
rounds; in each round every configuration gets one wrk run of ``--duration``
seconds, in an order that rotates from round to round, with a run of its
baseline between every two (B X B Y B Z B, then B Y B Z B X B, ...). There
are two baselines, each with its own sequence in every round: ``baseline``
(cheap bearer auth, no SQL) for most configurations, and ``baseline-token``
(DRF's TokenAuthentication) for the "-token" ones (B' X' B' Y' B'). A run's
ratio is its rate over the mean of the baseline runs just before and after
it, so drift in the machine's load hits both sides of a ratio alike; each
configuration's result is the median over the rounds of its rate and of its
ratio.

Every run is checked: wrk must see only 2xx answers, a "first" run must insert
one row per request and a "replay" run none (the view did not run).

    python bench_http.py --rounds 5 --duration 6 --out results/tmp/http.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from configs import (  # noqa: E402
    BODY,
    BY_NAME,
    CONFIGS,
    USERS,
    Config,
    authorization,
    credentials,
    replay_key,
    write_json,
)

BASE_PORT = int(os.environ.get("BENCH_PORT", "18400"))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port(start: int) -> int:
    port = start
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
        port += 1


class Server:
    """One gunicorn serving benchproject with BENCH_SERVER=kind."""

    def __init__(self, kind: str, port: int, workers: int) -> None:
        self.kind, self.port = kind, port
        env = dict(os.environ, BENCH_SERVER=kind, DJANGO_SETTINGS_MODULE="benchproject.settings")
        self.log_path = HERE / "results" / "tmp" / f"gunicorn-{kind}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("gunicorn")),
                "benchproject.wsgi:application",
                "--workers",
                str(workers),
                "--bind",
                f"127.0.0.1:{port}",
                "--worker-class",
                "sync",
                "--log-level",
                "warning",
            ],
            cwd=HERE,
            env=env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn {self.kind} exited; see {self.log_path}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/baseline/", timeout=2)
            except urllib.error.HTTPError:
                return  # any HTTP answer (401/405) means Django is up
            except OSError:
                time.sleep(0.2)
                continue
            return
        raise RuntimeError(f"gunicorn {self.kind} did not answer in {timeout}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def _cpu_ms(pids: list[int]) -> float:
    """CPU time (user + system) that these processes have used, in milliseconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks * _TICK_MS


def worker_pids(server: Server) -> list[int]:
    pid = server.process.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid, *map(int, children)]


def settle(server: Server, timeout: float = 10) -> None:
    """Wait until ``server``'s workers are idle.

    With more connections than workers, requests that wrk sent before it
    stopped still wait in the listen queue; they would run (and insert rows)
    during the next run. A run ends when the workers stop using CPU.
    """
    pids = worker_pids(server)
    deadline = time.monotonic() + timeout
    used = _cpu_ms(pids)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _cpu_ms(pids)
        if now - used <= _TICK_MS:
            return
        used = now


def backend_pids() -> list[int]:
    """The PostgreSQL backends serving the benchmark database, except this process's own."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return [row[0] for row in cursor.fetchall()]


_redis_client = None


def redis_cpu_ms() -> float:
    """CPU time (user + system) that the Redis server has used, in milliseconds; 0 without Redis.

    Redis's own work is part of what a Redis store costs: a Lua script that runs
    in the server is cheap for the application and not for Redis. Every row's CPU
    counts it, so a store that moves work into the server gains nothing by it.
    """
    global _redis_client
    url = os.environ.get("REDIS_URL")
    if not url:
        return 0.0
    if _redis_client is None:
        import redis

        _redis_client = redis.Redis.from_url(url)
    info = _redis_client.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1000


def post(port: int, path: str, key: str, auth: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=BODY.encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": auth,
            "Idempotency-Key": key,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def order_count() -> int:
    from benchproject.models import Order

    return Order.objects.count()


def prepare_database() -> None:
    """Users (with their DRF tokens), and empty tables so every run starts alike."""
    from benchproject.auth import ensure_users
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    ensure_users(USERS)
    tables = [
        t
        for t in connection.introspection.table_names()
        if t.startswith(
            (
                "benchproject_order",
                "django_idempotency_",
                "drf_idempotency_",
                "drf_idempotencykey_",
            )
        )
    ]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(connection.ops.quote_name(t) for t in tables))
        cursor.execute("ANALYZE")


def wrk_run(
    config: Config, server: Server, duration: float, threads: int, connections: int | None = None
) -> dict[str, object]:
    """One wrk run of ``config``: ``threads`` threads, one connection each unless
    ``connections`` says more (growth.py); a replay primes one key per thread."""
    port = server.port
    run_id = uuid.uuid4().hex[:8]
    if config.mode == "replay":
        for thread in range(threads):
            user, key = USERS[thread % len(USERS)], replay_key(run_id, thread)
            status, _ = post(port, config.path, key, authorization(config, user))
            assert 200 <= status < 300, f"{config.name}: priming answered {status}"
            status, _ = post(port, config.path, key, authorization(config, user))
            assert 200 <= status < 300, f"{config.name}: priming replay answered {status}"
    before = order_count()
    # Persistent connections: the workers' backends are there after priming.
    pids = worker_pids(server), backend_pids()
    cpu_before = _cpu_ms(pids[0]), _cpu_ms(pids[1]), redis_cpu_ms()
    scheme, values = credentials(config)
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections or threads),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "bench.lua"),
        f"http://127.0.0.1:{port}",
        "--",
        config.mode,
        config.path,
        run_id,
        BODY,
        scheme,
        ",".join(values),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    cpu_after = _cpu_ms(pids[0]), _cpu_ms(pids[1]), redis_cpu_ms()
    rows = order_count() - before
    if connections and connections > threads:
        settle(server)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT "))
    result: dict[str, object] = json.loads(line[len("BENCH_RESULT ") :])
    requests = int(result["requests"])  # type: ignore[arg-type]
    result["rps"] = requests / (int(result["duration_us"]) / 1e6)  # type: ignore[arg-type]
    result["rows_inserted"] = rows
    # CPU per request, of gunicorn, of PostgreSQL and of Redis: unlike a rate, it
    # hardly moves when other work shares the machine. Every row counts all three
    # (Redis idles at a few microseconds per request where no store uses it).
    result["app_cpu_ms"] = (cpu_after[0] - cpu_before[0]) / max(1, requests)
    result["db_cpu_ms"] = (cpu_after[1] - cpu_before[1]) / max(1, requests)
    result["redis_cpu_ms"] = (cpu_after[2] - cpu_before[2]) / max(1, requests)
    result["cpu_ms"] = result["app_cpu_ms"] + result["db_cpu_ms"] + result["redis_cpu_ms"]
    problems = []
    if result["status"] or result["timeout"] or result["connect"]:
        problems.append(
            f"errors: {result['status']} non-2xx, {result['timeout']} timeouts, "
            f"{result['connect']} connect"
        )
    if config.mode == "replay" and rows != 0:
        problems.append(f"the view ran {rows} times during replays")
    if config.mode == "first" and rows < requests:
        problems.append(f"{requests} requests but only {rows} rows inserted")
    result["problems"] = problems
    return result


def run_group(
    baseline: Config,
    others: list[Config],
    number: int,
    servers: dict[str, Server],
    duration: float,
    threads: int,
    connections: int | None = None,
) -> dict[str, dict[str, object]]:
    """One round of ``others`` against ``baseline``: B X B Y B ..., the order rotated by round.

    Each result's ratio is its rate over the mean of the baseline runs just
    before and after it; the baseline's own result holds the medians of its runs.
    """
    shift = number % max(1, len(others))
    order = others[shift:] + others[:shift]
    baseline_server = servers[baseline.server]
    runs = [wrk_run(baseline, baseline_server, duration, threads, connections)]
    results: dict[str, dict[str, object]] = {}
    for config in order:
        result = wrk_run(config, servers[config.server], duration, threads, connections)
        runs.append(wrk_run(baseline, baseline_server, duration, threads, connections))
        # The baseline just before and just after this run.
        around = (float(runs[-2]["rps"]) + float(runs[-1]["rps"])) / 2  # type: ignore[arg-type]
        result["ratio"] = float(result["rps"]) / around  # type: ignore[arg-type]
        results[config.name] = result
    for run_result in runs:
        run_result["ratio"] = 1.0
    results[baseline.name] = {
        "rps": statistics.median(float(r["rps"]) for r in runs),  # type: ignore[arg-type]
        "ratio": 1.0,
        "p50_us": statistics.median(int(r["p50_us"]) for r in runs),  # type: ignore[arg-type]
        "p99_us": statistics.median(int(r["p99_us"]) for r in runs),  # type: ignore[arg-type]
        "app_cpu_ms": statistics.median(float(r["app_cpu_ms"]) for r in runs),  # type: ignore[arg-type]
        "db_cpu_ms": statistics.median(float(r["db_cpu_ms"]) for r in runs),  # type: ignore[arg-type]
        "redis_cpu_ms": statistics.median(float(r["redis_cpu_ms"]) for r in runs),  # type: ignore[arg-type]
        "cpu_ms": statistics.median(float(r["cpu_ms"]) for r in runs),  # type: ignore[arg-type]
        "problems": [p for r in runs for p in r["problems"]],  # type: ignore[attr-defined]
        "runs": runs,
    }
    return results


def run(args: argparse.Namespace) -> dict[str, object]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")
    os.environ["BENCH_SERVER"] = "db"
    import django

    django.setup()
    prepare_database()

    if args.only:
        unknown = [name for name in args.only if name not in BY_NAME]
        if unknown:
            sys.exit(f"unknown configuration(s): {', '.join(unknown)}")
    # The selected configurations and the baseline that each one's ratio needs
    # (the main baseline always runs, as before).
    wanted = {"baseline"} | {
        name
        for c in CONFIGS
        if not args.only or c.name in args.only
        for name in (c.name, c.baseline)
    }
    configs, skipped = [], {}
    for config in CONFIGS:
        if config.name not in wanted:
            continue
        reason = config.missing()
        if reason:
            skipped[config.name] = reason
            log(f"skipping {config.name}: {reason}")
        else:
            configs.append(config)

    servers: dict[str, Server] = {}
    port = BASE_PORT
    try:
        for kind in dict.fromkeys(c.server for c in configs):
            port = free_port(port)
            servers[kind] = Server(kind, port, args.workers)
            port += 1
        for server in servers.values():
            server.wait_ready()
        log("servers up: " + ", ".join(f"{k} on :{s.port}" for k, s in servers.items()))

        for config in configs:  # warm up workers: imports, connections, caches
            wrk_run(config, servers[config.server], min(2.0, args.duration), args.threads)

        # Each baseline with the configurations measured against it, in CONFIGS' order.
        groups = {
            c.name: [o for o in configs if o.baseline == c.name and o is not c]
            for c in configs
            if c.is_baseline
        }
        rounds: list[dict[str, object]] = []
        for number in range(args.rounds):
            results: dict[str, dict[str, object]] = {}
            for baseline_name, others in groups.items():
                results.update(
                    run_group(
                        BY_NAME[baseline_name], others, number, servers, args.duration, args.threads
                    )
                )
            for name, result in results.items():
                for problem in result["problems"]:  # type: ignore[attr-defined]
                    log(f"round {number + 1} {name}: {problem}")
            rounds.append(results)
            log(
                f"round {number + 1}/{args.rounds}: "
                + ", ".join(
                    f"{name} {float(r['rps']):.0f}/s ({float(r['ratio']):.2f})"  # type: ignore[arg-type]
                    for name, r in results.items()
                )
            )
    finally:
        for server in servers.values():
            server.stop()

    summary = {}
    for config in configs:
        per_round = [r[config.name] for r in rounds]
        summary[config.name] = {
            "label": config.label,
            "mode": config.mode,
            "peer": config.peer,
            "scoped": config.scoped,
            "baseline": config.baseline,
            "auth": config.auth,
            "reference": config.reference,
            "rps": statistics.median(float(r["rps"]) for r in per_round),  # type: ignore[arg-type]
            "ratio": statistics.median(float(r["ratio"]) for r in per_round),  # type: ignore[arg-type]
            "ratios": [round(float(r["ratio"]), 3) for r in per_round],  # type: ignore[arg-type]
            "p50_ms": statistics.median(int(r["p50_us"]) for r in per_round) / 1000,  # type: ignore[arg-type]
            "p99_ms": statistics.median(int(r["p99_us"]) for r in per_round) / 1000,  # type: ignore[arg-type]
            "app_cpu_ms": statistics.median(float(r["app_cpu_ms"]) for r in per_round),  # type: ignore[arg-type]
            "db_cpu_ms": statistics.median(float(r["db_cpu_ms"]) for r in per_round),  # type: ignore[arg-type]
            "redis_cpu_ms": statistics.median(float(r["redis_cpu_ms"]) for r in per_round),  # type: ignore[arg-type]
            "cpu_ms": statistics.median(float(r["cpu_ms"]) for r in per_round),  # type: ignore[arg-type]
            "problems": [p for r in per_round for p in r["problems"]],  # type: ignore[attr-defined]
        }
    return {
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "wrk_threads": args.threads,
            "wrk_connections": args.threads,
            "gunicorn_workers": args.workers,
        },
        "results": summary,
        "skipped": skipped,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=4, help="wrk threads = connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server")
    parser.add_argument(
        "--only", nargs="*", help="configuration names (with the baseline each one needs)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    data = run(args)
    write_json(data, args.out)


if __name__ == "__main__":
    main()
