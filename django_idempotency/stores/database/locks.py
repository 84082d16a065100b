"""The locks that hold a key while its claim is open: one scheme, used by the
claim, the release, the purge and the admin.

PostgreSQL: ``pg_try_advisory_xact_lock`` on a bigint hash of (scope, key),
held exactly as long as the claim's transaction. MySQL and MariaDB:
``GET_LOCK`` on a name made of the database and the key's digest (user locks
are server-wide), held by the session until released or the connection drops.
Neither waits: a key that is held answers "in use" at once.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from django.db import DatabaseError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from ...keys import scoped_key
from ..base import RequestRecord
from . import sql

logger = logging.getLogger("django_idempotency.stores.database")

#: MySQL and MariaDB: seconds a purge batch waits for another purge's batch.
PURGE_LOCK_WAIT = 60


def lock_id(record: RequestRecord) -> int:
    """The PostgreSQL advisory lock id of (scope, key)."""
    digest = hashlib.blake2b(f"{record.scope}\x00{record.key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def try_advisory_lock(connection: BaseDatabaseWrapper, record: RequestRecord) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [lock_id(record)])
        (got,) = cursor.fetchone()
    return bool(got)


def _user_lock_name(connection: BaseDatabaseWrapper, what: str) -> str:
    # MySQL allows 64 characters.
    database = connection.settings_dict["NAME"]
    text = f"{database}\x00{what}".encode()
    return "django_idempotency:" + hashlib.blake2b(text, digest_size=20).hexdigest()


def get_user_lock(connection: BaseDatabaseWrapper, record: RequestRecord) -> str | None:
    """MySQL/MariaDB: the key's user lock, without waiting; its name, or None
    when another session holds it."""
    name = _user_lock_name(connection, scoped_key(record.scope, record.key))
    with connection.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(%s, 0)", [name])
        (got,) = cursor.fetchone()
    return name if got == 1 else None  # 0: held elsewhere; NULL: an error


def get_purge_lock(connection: BaseDatabaseWrapper) -> str:
    """MySQL/MariaDB: concurrent purges take turns, a batch at a time."""
    name = _user_lock_name(connection, "purge")
    with connection.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(%s, %s)", [name, PURGE_LOCK_WAIT])
        (got,) = cursor.fetchone()
    if got != 1:
        raise OperationalError(f"Another purge held the lock {name} for {PURGE_LOCK_WAIT} s.")
    return name


def release_user_lock(connection: BaseDatabaseWrapper, name: str | None) -> None:
    if name is None:
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT RELEASE_LOCK(%s)", [name])
    except DatabaseError:
        # The session keeps the lock unless the connection is gone. A kept
        # connection (CONN_MAX_AGE) would keep the key in use, so end it: the
        # server then frees every lock of the session.
        logger.warning("Could not release the claim's lock %s", name, exc_info=True)
        if not connection.in_atomic_block:
            connection.close()


def claims_held(alias: str) -> tuple[int, datetime | None] | None:
    """PostgreSQL: (how many claims other sessions hold, when the oldest one's
    transaction began); None elsewhere."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(sql.HELD_CLAIMS)
        starts = [start for (start,) in cursor.fetchall() if start is not None]
    # One row per held lock: bounded by the server's connections.
    return len(starts), min(starts, default=None)
