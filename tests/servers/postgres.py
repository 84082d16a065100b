"""A PostgreSQL cluster of a test's own (to stop, crash and restart), a
streaming replica of it, and PgBouncer in front of it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, run_checked, wait_for_port

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
def cluster_of_the_pass() -> Iterator[Cluster]:
    """A cluster of the test's own, in the PostgreSQL pass of the suite only:
    elsewhere, or without PostgreSQL's server binaries, the test skips."""
    import pytest

    from tests.helpers import on_postgresql

    if not on_postgresql():
        pytest.skip("runs in the PostgreSQL pass of scripts/test")
    if postgres_bin() is None:
        pytest.skip("needs PostgreSQL's server binaries (initdb, pg_ctl)")
    with postgres_cluster() as cluster:
        yield cluster


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A new PostgreSQL cluster in a temporary directory, on a free port, removed afterwards."""
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
        try:
            wait_for_port(port, "pgbouncer", process=process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {bouncer.log()}") from None
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
