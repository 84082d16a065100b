"""Run the test project under gunicorn, against the test database, for cross-process tests."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    """The URL of the database the current test runs on (the test database)."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return "sqlite:///" + str(settings["NAME"])
    return "postgres://{USER}:{PASSWORD}@{HOST}:{PORT}/{NAME}".format(
        **{k: settings[k] or "" for k in ("USER", "PASSWORD", "HOST", "PORT", "NAME")}
    )


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str

    def request(
        self, path: str, body: bytes = b"{}", *, user: str = "alice", password: str = "alice-pw",
        headers: dict[str, str] | None = None, method: str = "POST", timeout: float = 60,
    ) -> Reply:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        all_headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        all_headers.update(headers or {})
        req = urllib.request.Request(self.base + path, data=body if method != "GET" else None,
                                     headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Reply(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers.items()), exc.read())

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]


@contextmanager
def gunicorn(workers: int = 4, env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    environ = dict(os.environ)
    environ.update({"DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
                    "PYTHONPATH": str(ROOT)})
    environ.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "tests.wsgi", "--workers", str(workers),
         "--threads", "4", "--bind", f"127.0.0.1:{port}", "--timeout", "120",
         "--graceful-timeout", "1", "--log-level", "warning"],
        cwd=ROOT, env=environ,
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
