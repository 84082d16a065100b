"""gunicorn (serving tests.wsgi or the demo) and the ASGI servers (serving
tests.asgi), each in a process session of its own on a free port."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connection

from tests.helpers import ROOT
from tests.servers import free_port, wait_for_port


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def database_url() -> str:
    """The URL of the database the current test runs on (the test database)."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return "sqlite:///" + str(settings["NAME"])
    scheme = "mysql" if connection.vendor == "mysql" else "postgres"
    return (scheme + "://{USER}:{PASSWORD}@{HOST}:{PORT}/{NAME}").format(
        **{k: settings[k] or "" for k in ("USER", "PASSWORD", "HOST", "PORT", "NAME")}
    )


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str

    def request(
        self,
        path: str,
        body: bytes = b"{}",
        *,
        user: str = "alice",
        password: str = "alice-pw",
        headers: dict[str, str] | None = None,
        method: str = "POST",
        timeout: float = 60,
    ) -> Reply:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        all_headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        all_headers.update(headers or {})
        req = urllib.request.Request(
            self.base + path,
            data=body if method != "GET" else None,
            headers=all_headers,
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Reply(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers.items()), exc.read())

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]


@contextmanager
def gunicorn(
    workers: int = 4,
    env: dict[str, str] | None = None,
    *,
    app: str = "tests.wsgi",
    settings: str = "tests.settings",
    database: str | None = None,
    output: Any = None,
) -> Iterator[Server]:
    """gunicorn serving ``app`` on a free port; ``database`` defaults to the test database.

    ``output``, a file, receives the server's stdout and stderr (else inherited)."""
    port = free_port()
    command = [
        "gunicorn",
        app,
        "--workers",
        str(workers),
        "--threads",
        "4",
        "--bind",
        f"127.0.0.1:{port}",
        "--timeout",
        "120",
        "--graceful-timeout",
        "1",
        "--log-level",
        "warning",
    ]
    with _served(command, port, env, settings, database, output, stop_seconds=10) as server:
        yield server


# The ASGI servers that tests run the app under. gunicorn runs uvicorn's
# workers (the uvicorn-worker package); Daphne has one process and no workers.
ASGI_SERVERS = ("uvicorn", "gunicorn", "hypercorn", "daphne", "granian")


def asgi_command(name: str, app: str, port: int, workers: int, graceful: float | None) -> list[str]:
    """The command line of ASGI server ``name`` serving ``app`` on ``port``.

    ``graceful`` is its limit on the requests in flight at SIGTERM, in seconds,
    in each server's own setting (None: the server's default). Daphne has no
    such setting: it cancels them at once."""
    host = "127.0.0.1"
    if name == "uvicorn":
        command = ["uvicorn", app, "--host", host, "--port", str(port), "--workers", str(workers)]
        limit = ["--timeout-graceful-shutdown"]
    elif name == "gunicorn":
        command = ["gunicorn", app, "--worker-class", "uvicorn_worker.UvicornWorker"]
        command += ["--bind", f"{host}:{port}", "--workers", str(workers)]
        limit = ["--graceful-timeout"]
    elif name == "hypercorn":
        command = ["hypercorn", app, "--bind", f"{host}:{port}", "--workers", str(workers)]
        limit = ["--graceful-timeout"]
    elif name == "granian":
        command = ["granian", "--interface", "asgi", "--host", host, "--port", str(port)]
        command += ["--workers", str(workers), app]
        limit = ["--workers-kill-timeout"]
    elif name == "daphne":
        if workers != 1 or graceful is not None:
            raise ValueError("Daphne runs one process and has no graceful shutdown limit")
        return ["daphne", "--bind", host, "--port", str(port), "--verbosity", "0", app]
    else:
        raise ValueError(f"unknown ASGI server {name!r}")
    command += ["--log-level", "warning"]
    return command + ([*limit, f"{graceful:g}"] if graceful is not None else [])


@contextmanager
def asgi(
    name: str = "uvicorn",
    env: dict[str, str] | None = None,
    *,
    app: str = "tests.asgi:application",
    settings: str = "tests.settings",
    database: str | None = None,
    workers: int = 1,
    graceful: float | None = None,
    output: Any = None,
) -> Iterator[Server]:
    """ASGI server ``name`` (one of ASGI_SERVERS) serving ``app`` on a free port;
    ``database`` defaults to the test database. ``graceful``: see asgi_command."""
    port = free_port()
    command = asgi_command(name, app, port, workers, graceful)
    with _served(command, port, env, settings, database, output, stop_seconds=15) as server:
        yield server


@contextmanager
def _served(
    command: list[str],
    port: int,
    env: dict[str, str] | None,
    settings: str,
    database: str | None,
    output: Any,
    *,
    stop_seconds: float,
) -> Iterator[Server]:
    """``python -m <command>``, a server of the test app listening on ``port``:
    started, waited for, and stopped with SIGTERM (SIGKILL after ``stop_seconds``)."""
    environ = dict(os.environ)
    environ.update(
        {
            "DATABASE_URL": database or database_url(),
            "DJANGO_SETTINGS_MODULE": settings,
            "PYTHONPATH": str(ROOT),
            "DJANGO_DEBUG": "0",
        }
    )
    environ.update(env or {})
    # A session of its own, so that the workers go too if the server must be
    # killed: an orphaned worker would keep its requests' locks.
    process = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=environ,
        stdout=output,
        stderr=output,
        start_new_session=True,
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        wait_for_port(port, command[0], process=process)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(stop_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError):  # no process of it is left
            os.killpg(process.pid, signal.SIGKILL)


def worker_of_connection(server: Server, local_port: int) -> int | None:
    """The gunicorn worker that owns the TCP connection from ``local_port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in server.worker_pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None
