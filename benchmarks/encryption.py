#!/usr/bin/env python
"""What encryption at rest costs: ``@idempotent`` with and without ``IDEMPOTENCY_ENCRYPTION_KEYS``.

First request and replay, on the database store and the Redis store, with the
view answering 1 KB and 100 KB, each against the undecorated view answering
the same body, with growth.py's machinery and honesty rules (every run checked:
only 2xx, one row per first request and none during replays; ratios to the
baseline runs just before and after; medians over rounds). The encrypted
servers are the same gunicorn with ``BENCH_SERVER=db-sealed`` or
``redis-sealed`` (benchproject/settings.py).

    python encryption.py --rounds 3 --duration 2 --out results/tmp/encryption.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from configs import Config  # noqa: E402
from growth import STORES, Measure, body_configs, log, size_tag  # noqa: E402

BODY_SIZES = [1024, 100 * 1024]


def configs(size: int) -> tuple[Config, list[Config]]:
    """growth.py's configurations for ``size``, and each of ours again, encrypted."""
    baseline, plain = body_configs(size)
    sealed = [
        replace(
            config,
            name=config.name.replace(config.server, config.server + "-sealed", 1),
            label=config.label + ", encrypted",
            server=config.server + "-sealed",
        )
        for config in plain
    ]
    return baseline, plain + sealed


def render(data: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results: encryption at rest",
        "",
        f"Made with `python benchmarks/encryption.py --rounds {data['rounds']} --duration "
        f"{data['duration']}` on {data['when']}; {data['machine']}; load average at the end "
        f"{data['load']}. Ratio = rate over the undecorated view answering the same body "
        "(the mean of the baseline runs just before and after); medians over the rounds.",
        "",
        "| body | store | mode | plain ratio | encrypted ratio | plain CPU ms/req "
        "| encrypted CPU ms/req |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for point in data["bodies"]:
        tag, results = size_tag(point["bytes"]), point["results"]
        for server, store in STORES.items():
            for mode in ("first", "replay"):
                plain = results.get(f"ours-{server}-{mode}-{tag}")
                sealed = results.get(f"ours-{server}-sealed-{mode}-{tag}")
                if plain is None or sealed is None:
                    continue
                lines.append(
                    f"| {tag} | {store} | {mode} | {plain['ratio']:.2f} | {sealed['ratio']:.2f} "
                    f"| {plain['cpu_ms']:.2f} | {sealed['cpu_ms']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=4, help="wrk threads (= connections)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")
    os.environ["BENCH_SERVER"] = "db"
    import django

    django.setup()
    from bench_http import Server, free_port, prepare_database

    prepare_database()
    kinds = ["db", "db-sealed"]
    if os.environ.get("REDIS_URL"):
        kinds += ["redis", "redis-sealed"]
    servers: dict[str, Server] = {}
    port = int(os.environ.get("BENCH_PORT", "18400")) + 80
    data: dict[str, Any] = {"rounds": args.rounds, "duration": args.duration, "bodies": []}
    try:
        for kind in kinds:
            port = free_port(port)
            servers[kind] = Server(kind, port, args.workers)
            port += 1
        for server in servers.values():
            server.wait_ready()
        measure = Measure(servers, args)
        for size in BODY_SIZES:
            log(f"encryption: {size_tag(size)} bodies")
            data["bodies"].append({"bytes": size, "results": measure(*configs(size))})
    finally:
        for server in servers.values():
            server.stop()
    data["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    data["machine"] = (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, Django {django.__version__}"
    )
    data["load"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    table = render(data)
    print(table)
    (HERE / "results" / "encryption.md").write_text(table)
    if args.out:
        args.out.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
