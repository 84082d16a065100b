#!/usr/bin/env python
"""Where the time of one request goes, in-process, without HTTP or load generator.

Calls the WSGI application directly, N times per configuration, and prints
the Python CPU time per request (``time.process_time``; the database's own
work is not in it, the round trips' client side is). With ``--profile NAME``
it runs that configuration under cProfile and prints the top functions.

CPU time moves with the machine's load; instruction counts do not. With
``--instructions`` each configuration runs twice under valgrind's callgrind,
with ``-n`` and with twice as many requests, and the difference of the two
totals over ``-n`` is printed: the instructions of one request, start-up and
warm-up cancelled out (the interpreter's and every C library's, the database
and Redis servers' own work not included).

    python profile_view.py -n 2000
    python profile_view.py -n 2000 --profile ours-db-first
    python profile_view.py -n 200 --instructions --only baseline ours-redis-first
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from configs import BODY, CONFIGS, USERS, authorization  # noqa: E402


def environ(path: str, key: str, auth: str) -> dict[str, object]:
    body = BODY.encode()
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": auth,
        "HTTP_IDEMPOTENCY_KEY": key,
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="requests per configuration")
    parser.add_argument("--server", default="db", help="BENCH_SERVER (db, redis, drfi-db, ...)")
    parser.add_argument("--profile", help="a configuration to run under cProfile")
    parser.add_argument("--only", nargs="+", help="only these configurations")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per request, counted by valgrind --tool=callgrind",
    )
    args = parser.parse_args()
    if args.instructions:
        count_instructions(args)
        return
    os.environ["BENCH_SERVER"] = args.server
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    from benchproject.auth import ensure_users

    ensure_users(USERS)

    def call(path: str, key: str, auth: str) -> str:
        status: list[str] = []
        body = app(environ(path, key, auth), lambda s, h, exc_info=None: status.append(s))
        b"".join(body)
        if hasattr(body, "close"):
            body.close()
        return status[0]

    configs = [c for c in CONFIGS if c.server == args.server and not c.missing()]
    if args.profile:
        configs = [c for c in configs if c.name == args.profile]
    if args.only:
        configs = [c for c in configs if c.name in args.only]
    for config in configs:
        auth = authorization(config, USERS[0])
        replay = str(uuid.uuid4())
        if config.mode == "replay":
            assert call(config.path, replay, auth).startswith("2")
        keys = [replay if config.mode == "replay" else str(uuid.uuid4()) for _ in range(args.n)]
        for key in keys[:50]:  # warm up
            call(config.path, key if config.mode == "replay" else str(uuid.uuid4()), auth)
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        started = time.process_time()
        if profiler:
            profiler.enable()
        for key in keys:
            status = call(config.path, key, auth)
        if profiler:
            profiler.disable()
        cpu = (time.process_time() - started) / args.n * 1000
        print(f"{config.name:22s} {cpu:6.3f} ms CPU per request (last status {status})")
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(int(os.environ.get("PROFILE_LINES", "45")))


def count_instructions(args: argparse.Namespace) -> None:
    """Instructions per request of each configuration (see the module docstring)."""
    names = args.only or [c.name for c in CONFIGS if c.server == args.server and not c.missing()]
    by_name = {c.name: c for c in CONFIGS}
    for name in names:
        totals = []
        for n in (args.n, 2 * args.n):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "callgrind.out"
                command = [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={out}",
                    sys.executable,
                    __file__,
                    "-n",
                    str(n),
                    "--server",
                    by_name[name].server,
                    "--only",
                    name,
                ]
                subprocess.run(command, check=True, capture_output=True)
                summary = re.search(rb"^summary: (\d+)", out.read_bytes(), re.M)
                assert summary, "no summary line in the callgrind output"
                totals.append(int(summary.group(1)))
        per_request = (totals[1] - totals[0]) / args.n
        print(f"{name:22s} {per_request / 1000:9.1f} k instructions per request", flush=True)


if __name__ == "__main__":
    main()
