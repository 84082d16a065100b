"""Real servers that tests start on free loopback ports, one module per kind:
``http`` (gunicorn and the ASGI servers), ``postgres`` (a cluster of a test's
own, a streaming replica, PgBouncer), ``redis`` (redis-server, replicas,
Sentinel, Cluster) and ``demo`` (the demo project in testproject/). The shared
PostgreSQL and Redis are never stopped: a test that stops a server owns it."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, what: str, *, seconds: float = 30, process: Any = None) -> None:
    """Until something accepts connections on ``port``; raise if ``process``
    (a Popen) exits first or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def run_checked(command: list[str], **kwargs: Any) -> str:
    """Run a command to its end and return its stdout; if it fails, raise with
    its output, so that a failed setup step says why (check=True would not)."""
    out = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {out.returncode}\n"
            f"--- stdout ---\n{out.stdout}--- stderr ---\n{out.stderr}"
        )
    return out.stdout
