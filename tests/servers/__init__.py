"""Real servers for cross-process tests: gunicorn (serving tests.wsgi or the demo in
testproject/), the ASGI servers (serving tests.asgi), a throwaway PostgreSQL
cluster that a test may stop and start, and the demo's database with its accounts."""

from __future__ import annotations

import base64
import contextlib
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
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start") from None
                time.sleep(0.1)
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


# A PostgreSQL of our own, to stop and start: the shared one must never go down.

PG_BIN = Path("/usr/lib/postgresql")


def postgres_bin() -> Path | None:
    versions = sorted(PG_BIN.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@dataclass
class Cluster:
    bin: Path
    data: Path
    port: int

    def _as_owner(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        run_checked([*prefix, *command], cwd="/")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_owner(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.data / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends sessions and shuts down; ``immediate`` is a crash."""
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, name: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A new PostgreSQL cluster in a temporary directory, on a free port, removed afterwards."""
    import shutil
    import tempfile

    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
    data = Path(tempfile.mkdtemp(prefix="idempotency-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    cluster = Cluster(bin_dir, data, free_port())
    try:
        cluster._as_owner(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already down
            cluster.stop("immediate")
        shutil.rmtree(data, ignore_errors=True)


# The demo project (testproject/) on a database of its own.


@dataclass
class Demo:
    database: str

    def manage(self, *args: str) -> str:
        environ = dict(
            os.environ,
            DATABASE_URL=self.database,
            PYTHONPATH=str(ROOT),
            DJANGO_SETTINGS_MODULE="testproject.settings",
        )
        return run_checked(
            [sys.executable, str(ROOT / "testproject" / "manage.py"), *args], cwd=ROOT, env=environ
        )

    def api_key(self, name: str, credits: int) -> str:
        return self.manage("create_api_key", name, "--credits", str(credits)).splitlines()[-1]

    def sql(self, query: str, *params: object) -> list[tuple[object, ...]]:
        if self.database.startswith("mysql://"):
            return _mysql_sql(self.database, query, params)
        import psycopg

        with psycopg.connect(self.database, autocommit=True) as conn:
            cursor = conn.execute(query, params or None)
            return list(cursor.fetchall()) if cursor.description else []

    def server(self, workers: int = 4, env: dict[str, str] | None = None) -> Any:
        """gunicorn serving the demo; ``env`` may pick the store (IDEMPOTENCY_STORE, REDIS_URL)."""
        return gunicorn(
            workers,
            {"DEMO_ALLOW_DELAY": "1", **(env or {})},
            app="testproject.wsgi",
            settings="testproject.settings",
            database=self.database,
        )


def demo_on(database: str) -> Demo:
    demo = Demo(database)
    demo.manage("migrate", "--no-input", "-v", "0")
    return demo


def on_postgresql() -> bool:
    """Whether this pass of the suite runs on PostgreSQL (scripts/test's second pass)."""
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def on_mysql() -> bool:
    """Whether this pass of the suite runs on MariaDB (scripts/test's third pass)."""
    return os.environ.get("DATABASE_URL", "").startswith("mysql://")


def _mysql_sql(url: str, query: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    import MySQLdb

    parts = urlsplit(url)
    conn = MySQLdb.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "",
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        charset="utf8mb4",
        autocommit=True,
    )
    try:
        cursor = conn.cursor()
        cursor.execute(query, params or None)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()


@contextmanager
def scratch_database(suffix: str) -> Iterator[str]:
    """A new database on the PostgreSQL or MariaDB server of ``DATABASE_URL``,
    named after the test database and ``suffix``, dropped afterwards."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    name = f"{parts.path.lstrip('/')}_{suffix}"
    if on_mysql():
        server = urlunsplit(parts._replace(path="/"))
        _mysql_sql(server, f"DROP DATABASE IF EXISTS `{name}`", ())
        _mysql_sql(server, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4", ())
        try:
            yield urlunsplit(parts._replace(path="/" + name))
        finally:
            _mysql_sql(server, f"DROP DATABASE IF EXISTS `{name}`", ())
        return
    import psycopg

    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path="/" + name))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def demo_database(tmp_path: Path, suffix: str) -> Iterator[str]:
    """A database of the pass's kind for the demo: a SQLite file, or a scratch
    database on the suite's PostgreSQL server, dropped afterwards."""
    if not on_postgresql():
        yield f"sqlite:///{tmp_path / (suffix + '.sqlite3')}"
        return
    with scratch_database(suffix) as url:
        yield url


# A Redis of our own, to stop and start: the shared one must never go down.


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to clients, no saving)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


# PgBouncer and a streaming replica in front of / behind a cluster of our own.


@dataclass
class Bouncer:
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text() if path.exists() else ""


@contextmanager
def pgbouncer(
    cluster: Cluster, *, pool_mode: str = "transaction", pool_size: int = 4
) -> Iterator[Bouncer]:
    """PgBouncer (the Debian package) on a free port, in front of every database of ``cluster``."""
    import shutil
    import tempfile

    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer is not installed (scripts/lib.sh: ensure_pgbouncer)")
    directory = Path(tempfile.mkdtemp(prefix="idempotency-pgbouncer-"))
    port = free_port()
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={cluster.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'userlist.txt'}\n"
        f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        "ignore_startup_parameters = extra_float_digits,options\nadmin_users = postgres\n"
        "log_connections = 0\nlog_disconnections = 0\n"
    )
    command = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(directory, "postgres", "postgres")
        for child in directory.iterdir():
            shutil.chown(child, "postgres", "postgres")
        command[1:1] = ["-u", "postgres"]
    # Not a pipe: PgBouncer logs to stderr too, and would stop once a pipe nobody reads is full.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bouncer = Bouncer(port, process, directory)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {bouncer.log()}") from None
                time.sleep(0.1)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def streaming_replica(primary: Cluster) -> Iterator[Cluster]:
    """A hot standby of ``primary`` (``pg_basebackup -R``, streaming), on a free port."""
    import shutil
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="idempotency-pg-standby-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    replica = Cluster(primary.bin, data, free_port())
    try:
        replica._as_owner(
            str(primary.bin / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(data),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        )
        replica.start()
        yield replica
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            replica.stop("immediate")
        shutil.rmtree(data, ignore_errors=True)
