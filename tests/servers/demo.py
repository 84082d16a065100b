"""The demo project (testproject/) on a database of its own, run by manage.py
and served by gunicorn."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.helpers import ROOT, on_mysql, on_postgresql
from tests.servers import run_checked
from tests.servers.http import gunicorn


@dataclass
class Demo:
    database: str

    def manage(self, *args: str) -> str:
        environ = dict(
            os.environ,
            DATABASE_URL=self.database,
            PYTHONPATH=str(ROOT),
            DJANGO_SETTINGS_MODULE="testproject.settings",
            # The demo's cache is Redis only when a test asks for it (server(env=...)):
            # the suite's own REDIS_URL must not need django-redis where it is absent.
            REDIS_URL="",
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
            {"DEMO_ALLOW_DELAY": "1", "REDIS_URL": "", **(env or {})},
            app="testproject.wsgi",
            settings="testproject.settings",
            database=self.database,
        )


def demo_on(database: str) -> Demo:
    demo = Demo(database)
    demo.manage("migrate", "--no-input", "-v", "0")
    return demo


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
