"""The ORM store: records in the ``IdempotencyRecord`` table.

Why one transaction
-------------------
``begin`` opens a transaction (a savepoint under ``ATOMIC_REQUESTS``) on the
store's database and claims the key in it; the view runs inside it; ``finish``
writes the record with the response and commits. So the view's database writes and the stored
response commit together or not at all:

* the view raises, answers 5xx or a released status: the block rolls back,
  taking the claim and the view's writes with it, and a retry runs cleanly;
* the worker dies: its connection drops, the server aborts the transaction,
  and again nothing is left behind: no lease to expire, no key wedged;
* while the first request's transaction is open, its claim (an advisory lock
  on PostgreSQL, an uncommitted row elsewhere) holds the key, so a duplicate
  can never run.

The price is that a request holds a transaction open for as long as the view
runs, which is what ``ATOMIC_REQUESTS`` does anyway.

Claiming on PostgreSQL
----------------------
One statement claims or fetches: a call of a PL/pgSQL function (migration
0003's docstring says why a function: a statement this complex cost more to
plan, on every request, than all the rest a first request adds). Every
claimant takes ``pg_try_advisory_xact_lock`` on a hash of (scope, key), which
never waits and is held exactly as long as the claim's transaction, so a
duplicate answers "in use" at once instead of waiting on the unique index. A
``SET LOCAL lock_timeout`` would do the same but costs two more statements per
request (set, then restore for the view) and still makes a duplicate wait.

Migration 0005's function (``CLAIM_FUNCTION``, v2) makes that lock the whole
claim under READ COMMITTED: it re-reads the record after taking the lock (its
docstring cites why the re-read sees what the previous holder committed) and
writes nothing, and ``finish`` inserts the finished record: one write of the
record per first request instead of two (an INSERT, then an UPDATE). A row
with ``_Held.pk`` None is that case. Under REPEATABLE READ or SERIALIZABLE the
function inserts the in-flight row first, as v1 does, because the re-read could
not see a later commit there. The unique constraint on (scope, key) still
guards the table: a live record that finish meets (written by someone not
taking the lock) raises StoreError, rolling the request back.

Where v2 is missing (migration 0005 not run yet), v1 (``CLAIM_FUNCTION_V1``,
migration 0003: write first, update at finish) claims; both compute the same
lock id, so old and new code exclude each other during a rolling deploy.
Where both are missing, v1's steps go as one CTE (``_PG_SQL``).

When a function is missing is decided per error, by its SQLSTATE (see
``_FUNCTION_MISSING``): every claim whose call failed that way is retried with
the next function (v2, then v1), then the CTE, at once, whichever thread or
coroutine it runs in, so no request fails for it. After such an error the
alias skips that function, and tries it again every ``CLAIM_FUNCTION_RETRY``
seconds, so a ``migrate`` that restores it is noticed without a restart. The
state is one number per (alias, function) (written whole, never
read-then-updated), so threads and async tasks need no lock for correctness;
a lock only keeps the warning to one line per change.

Finding a record
----------------
Every path finds a record by ``digest`` (``keys.scoped_key``: SHA-256 of
scope, NUL, key, in lowercase hex), unique and indexed, never by the
``scope`` and ``key`` columns, which compare by their collation: MySQL's and
MariaDB's defaults ignore case and trailing spaces and would make two callers
one. The PostgreSQL functions compute the same digest from their arguments.

Claiming on MySQL and MariaDB
-----------------------------
``_begin_mysql``: a plain read answers a finished record; else
``GET_LOCK(name, 0)`` on the key (never waits: not granted is "in use"), and
only its holder writes the key's row, so InnoDB never makes a duplicate wait
on a row lock, and no claim takes a gap lock that two INSERTs could deadlock
on under REPEATABLE READ. The lock is session-level: released by the store
once the claim's block has ended (``_release_user_lock``), and by the server
when the connection drops.

Other databases
---------------
The portable path reads, then inserts in a savepoint and relies on the unique
constraint (IntegrityError means someone else won). SQLite serialises writers,
so there every claim, a duplicate or a new key alike, waits for the database's
write lock (its ``timeout`` option, the busy timeout) while another request's
transaction holds it; a duplicate then sees the finished record. A claim that
cannot get the lock in time answers 503 (StoreError), never "in use": the
holder's claim is uncommitted, so nothing can tell whether it holds this key.

Why each claim path is kept
---------------------------
* The PL/pgSQL functions (``_PG_CALLS``): the common production case, and the
  one that a measured cost (planning the CTE on every request) decided. v1
  stays for databases that have not run migration 0005 yet.
* The CTE (``_PG_SQL``): v1's steps, for a PostgreSQL database that has the
  table but neither function. Test databases made with ``--nomigrations``
  (pytest-django, a common setup) are built from the models and never run
  migration 0003; without the CTE every guarded request there would fail.
* SQLite (``_SQLITE_SQL``): SQLite must write first so that a duplicate waits
  for the write lock under the busy timeout (a read first fails at once), so
  the portable read-then-insert does not serve it. SQLite older than 3.35
  (Debian 11, Ubuntu 20.04; Django 4.2 supports 3.21 and later) has no
  ``RETURNING``: there ``_SQLITE_OLD_SQL`` deletes an expired record and then
  runs ``INSERT OR IGNORE`` (both writes), taking the claim's id from the cursor.
  It is chosen by Django's feature flag, ``can_return_columns_from_insert``.
* MySQL and MariaDB (``_begin_mysql``): InnoDB's row locks make a duplicate
  wait, and its gap locks deadlock racing claims, on the portable path.
* The portable path: Oracle and third-party backends.

Purging
-------
:meth:`DatabaseStore.purge_expired` (``manage.py purge_idempotency_keys``)
fixes its cut-off when it starts, then deletes rows in batches of primary
keys, each batch one short statement in its own transaction (autocommit), so
no lock is held for long and no row is loaded into Python. On PostgreSQL a
batch is::

    WITH batch AS MATERIALIZED (
        SELECT id FROM t WHERE expires_at <= %s ORDER BY expires_at LIMIT %s
        FOR UPDATE SKIP LOCKED)
    DELETE FROM t USING batch WHERE t.id = batch.id AND expires_at <= %s

``SKIP LOCKED`` lets several purges (cron on several hosts) run at once without
waiting on each other or deleting a row twice, and never waits on a request
that is taking over an expired key in place. Each purge counts the rows that
its own statements deleted (the cursor's rowcount), so the counts add up.
On MySQL and MariaDB a batch selects its primary keys ``FOR UPDATE SKIP
LOCKED`` in a transaction and deletes them; concurrent purges take turns, a
batch at a time, under a user lock. Elsewhere (SQLite...) a batch
selects primary keys through the ORM, then deletes them in one statement that
checks the expiry again; a row that another purge deleted meanwhile is simply
not counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from django.conf import settings
from django.core import checks
from django.db import (
    DatabaseError,
    IntegrityError,
    OperationalError,
    connections,
    models,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Case, F, Value, When
from django.utils import timezone

from ..conf import conf, store_database
from ..errors import table_missing
from ..keys import scoped_key
from ..models import IdempotencyRecord
from .base import (
    Claim,
    Decision,
    InUse,
    RequestRecord,
    Store,
    StoredResponse,
    StoreError,
    StoreMisconfigured,
    outcome_of,
)

logger = logging.getLogger(__name__)

#: The claim function that the store calls on PostgreSQL: migration 0005's,
#: which claims without writing under READ COMMITTED.
CLAIM_FUNCTION = "django_idempotency_claim_v2"
#: Migration 0003's claim function, which writes the in-flight row first. Called
#: where CLAIM_FUNCTION is missing (migration 0005 has not run yet).
CLAIM_FUNCTION_V1 = "django_idempotency_claim_v1"
# The functions in the order the store tries them; past the last, the CTE.
_CLAIM_FUNCTIONS = (CLAIM_FUNCTION, CLAIM_FUNCTION_V1)
#: MySQL and MariaDB: seconds a purge batch waits for another purge's batch.
PURGE_LOCK_WAIT = 60
#: Seconds between attempts to use a claim function again once it was missing.
CLAIM_FUNCTION_RETRY = 30.0
# SQLSTATEs that mean "the claim function cannot be called here" while its
# table may be fine, so the CTE can claim instead: undefined_function (dropped,
# never migrated, another signature, or not on the search_path) and
# insufficient_privilege (a role without EXECUTE on it). Both are checked to
# name the function: a missing table or a denied table is the CTE's problem too.
_FUNCTION_MISSING = frozenset({"42883", "42501"})
# (alias, function) -> time.monotonic() until which claims skip that function
# (the next one, or the CTE after the last). Absent: the function is used.
_missing_until: dict[tuple[str, str], float] = {}
_missing_lock = threading.Lock()

State = IdempotencyRecord.State
# The stored strings. (str(), not .value: mypy with python_version 3.10 types
# the members of a TextChoices that has labels as tuples.)
_IN_FLIGHT = str(State.IN_FLIGHT)
_COMPLETED = str(State.COMPLETED)
# A released attempt, kept until its TTL ends so that the next attempt of the
# same request gets the same request.idempotency_key (see release()). No view,
# replay or conflict ever sees it; the admin shows it as "released".
_RELEASED = str(State.RELEASED)


class _Released:
    """What begin() found: a released attempt, to take over."""


_RELEASED_FOUND = _Released()


@dataclass(frozen=True)
class _Unwritten:
    """What begin() got on PostgreSQL under READ COMMITTED: the key, held by
    the advisory lock alone; finish() inserts the record, taking an expired
    one over in place if ``take_over``."""

    take_over: bool


_UNWRITTEN = _Unwritten(take_over=False)
_UNWRITTEN_OVER = _Unwritten(take_over=True)
# Adapts the body for the database at hand, as the ORM would (bytea, BLOB, ...).
_BODY_FIELD = cast(
    "models.BinaryField[Any, Any]", IdempotencyRecord._meta.get_field("response_body")
)
_COLUMNS = "fingerprint, state, response_status, response_headers, response_body"


@dataclass
class _Held:
    """What a DatabaseStore claim holds: the open block and the claimed row."""

    alias: str
    atomic: transaction.Atomic
    #: The claimed row, or None when the claim wrote none (the advisory lock
    #: holds the key) and finish() inserts the record.
    pk: int | None
    #: With pk None: an expired record of the key is there, to take over.
    take_over: bool = False
    #: MySQL and MariaDB: the name of the user-level lock that holds the key,
    #: released once the claim's block has ended.
    user_lock: str | None = None


def _lock_id(record: RequestRecord) -> int:
    digest = hashlib.blake2b(f"{record.scope}\x00{record.key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# MySQL's ER_DUP_ENTRY (MariaDB's too).
_MYSQL_DUPLICATE_KEY = 1062


def _user_lock_name(connection: BaseDatabaseWrapper, record: RequestRecord) -> str:
    """The GET_LOCK name of (scope, key) in this database. User locks are
    server-wide, so the name includes the database; MySQL allows 64 characters."""
    database = connection.settings_dict["NAME"]
    digest = scoped_key(record.scope, record.key)
    return (
        "django_idempotency:"
        + hashlib.blake2b(f"{database}\x00{digest}".encode(), digest_size=20).hexdigest()
    )


def _release_user_lock(connection: BaseDatabaseWrapper, name: str | None) -> None:
    if name is None:
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT RELEASE_LOCK(%s)", [name])
    except DatabaseError:
        # The session still holds the lock unless the connection is gone. A
        # connection that Django keeps (CONN_MAX_AGE) would keep the key in
        # use, so end it: the server then frees every lock of the session.
        logger.warning("Could not release the claim's lock %s", name, exc_info=True)
        if not connection.in_atomic_block:
            connection.close()


def _sqlite_busy(connection: BaseDatabaseWrapper, exc: BaseException) -> bool:
    """SQLite has one writer at a time, and another request kept the write lock
    past the busy timeout (at BEGIN IMMEDIATE, or at our INSERT)."""
    return (
        connection.vendor == "sqlite" and isinstance(exc, OperationalError) and "locked" in str(exc)
    )


def _sqlite_busy_error(exc: BaseException) -> StoreError:
    # Whoever holds the lock may be running any key: its uncommitted claim
    # cannot be read, so "in use" would be a guess, and a wrong one for every
    # other key. Busy is the truth, and a retry can succeed.
    return StoreError(
        "The SQLite database stayed locked by another request's transaction for longer "
        f"than its busy timeout (the 'timeout' database option): {exc}"
    )


def _claim_function_missing(
    connection: BaseDatabaseWrapper, exc: BaseException, function: str
) -> bool:
    """Whether the claim failed only because ``function`` cannot be called in
    this database; then later claims skip it (for the next function, or the
    CTE) for a while.

    Decided by this error alone, never by what another thread saw: every
    request whose call failed this way retries without the function."""
    if connection.vendor != "postgresql" or not isinstance(exc, DatabaseError):
        return False
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate not in _FUNCTION_MISSING or function not in str(exc):
        return False
    alias = connection.alias
    with _missing_lock:
        warn = (alias, function) not in _missing_until
        _missing_until[alias, function] = time.monotonic() + CLAIM_FUNCTION_RETRY
    if warn:
        following = _CLAIM_FUNCTIONS.index(function) + 1
        if following < len(_CLAIM_FUNCTIONS):
            instead = f"claims try {_CLAIM_FUNCTIONS[following]} instead"
        else:
            instead = "claims fall back to a statement that costs more to plan on every request"
        logger.warning(
            "The PostgreSQL function %s cannot be called in database %r (%s; its tables "
            "were made without migrations, or `manage.py migrate django_idempotency` has "
            "not run): %s, and try the function again every %g s.",
            function,
            alias,
            str(exc).splitlines()[0],
            instead,
            CLAIM_FUNCTION_RETRY,
        )
    return True


def _claim_function(alias: str, start: int) -> str | None:
    """The claim function this claim should call, trying them from ``start``
    on; None: send the CTE."""
    for function in _CLAIM_FUNCTIONS[start:]:
        until = _missing_until.get((alias, function))
        if until is None:
            return function
        if time.monotonic() >= until:
            # Time to try it again. The first claim here pushes the next
            # attempt out, so a burst sends one or a few calls, not all of
            # them; any call that fails falls back by itself
            # (_claim_function_missing).
            _missing_until[alias, function] = time.monotonic() + CLAIM_FUNCTION_RETRY
            return function
    return None


def _claim_function_worked(alias: str, function: str) -> None:
    """The function answered: use it from now on (it was migrated back)."""
    if _missing_until.pop((alias, function), None) is not None:
        logger.info(
            "The PostgreSQL function %s is back in database %r: claims use it again.",
            function,
            alias,
        )


#: Database vendors (Django's ``connection.vendor``) whose claim path the
#: test suite proves against real servers; docs/databases.rst says where.
PROVEN_VENDORS = frozenset({"postgresql", "sqlite", "mysql"})


def _check_vendor(alias: str) -> list[checks.CheckMessage]:
    allow = conf.raw("IDEMPOTENCY_ALLOW_UNTESTED_DATABASE")
    if not isinstance(allow, bool):
        return [
            checks.Error(
                f"IDEMPOTENCY_ALLOW_UNTESTED_DATABASE must be True or False, not {allow!r}.",
                hint="A string such as 'false' (read from an environment variable) is not a "
                "boolean; convert it, e.g. os.environ.get(...) == 'true'.",
                id="django_idempotency.E021",
            )
        ]
    if alias not in settings.DATABASES or allow:
        return []
    connection = connections[alias]
    if connection.vendor in PROVEN_VENDORS:
        return []
    return [
        checks.Error(
            f"The database store keeps its records in {alias!r}, on {connection.display_name} "
            f"(vendor {connection.vendor!r}). django-idempotency proves its claim "
            "(one run per key under concurrent duplicates, what a duplicate gets, the view's "
            "writes committed with the response, crashes) on PostgreSQL, MariaDB/MySQL and "
            f"SQLite only. On {connection.display_name} the store would use its portable path "
            "(read, then insert under the unique constraint), which no test proves there.",
            hint="Keep the records on PostgreSQL, MariaDB/MySQL or SQLite (IDEMPOTENCY_DATABASE "
            "or your DATABASE_ROUTERS), use the Redis store, or set "
            "IDEMPOTENCY_ALLOW_UNTESTED_DATABASE = True to accept the untested path knowingly "
            "(see the Databases page of the docs).",
            id="django_idempotency.E033",
        )
    ]


class DatabaseStore(Store):
    """Stores records with the Django ORM, in the view's own transaction."""

    rolls_back_view_writes = True

    @property
    def alias(self) -> str:
        return conf.IDEMPOTENCY_DATABASE

    @classmethod
    def check(cls) -> list[checks.CheckMessage]:
        alias = conf.raw("IDEMPOTENCY_DATABASE")
        # Unset: the routers decide (checks.check_database_routing).
        if alias is not None and (not isinstance(alias, str) or alias not in settings.DATABASES):
            return [
                checks.Error(
                    f"IDEMPOTENCY_DATABASE {alias!r} is not a database alias in DATABASES.",
                    hint=f"Use one of {sorted(settings.DATABASES)}, or leave it unset to follow "
                    "DATABASE_ROUTERS; the database store keeps its records there, in the same "
                    "transaction as the view's writes.",
                    id="django_idempotency.E011",
                )
            ]
        return _check_vendor(store_database())

    def purge_expired(
        self,
        *,
        now: datetime | None = None,
        created_before: datetime | None = None,
        batch_size: int = 5000,
        dry_run: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        purge = _Purge(self.alias, now or timezone.now(), created_before)
        if dry_run:
            return purge.count()
        total = 0
        while (deleted := purge.batch(batch_size)) is not None:
            total += deleted
            if on_batch is not None:
                on_batch(deleted)
        return total

    def begin(self, record: RequestRecord) -> Decision:
        alias = self.alias
        connection = connections[alias]
        start = 0  # of _CLAIM_FUNCTIONS: the first one to try
        while True:
            atomic = transaction.atomic(using=alias)
            try:
                atomic.__enter__()
            except DatabaseError as exc:
                if _sqlite_busy(connection, exc):
                    raise _sqlite_busy_error(exc) from exc
                raise StoreError(str(exc)) from exc
            first_claimed_at = None
            function = None
            user_lock = None
            try:
                outcome: Decision | int | _Released | _Unwritten
                if connection.vendor == "postgresql":
                    function = _claim_function(alias, start)
                    outcome = self._begin_postgresql(connection, record, function)
                elif connection.vendor == "sqlite":
                    if connection.features.can_return_columns_from_insert:
                        outcome = self._begin_sqlite(connection, record)
                    else:
                        outcome = self._begin_old_sqlite(connection, record)
                elif connection.vendor == "mysql":
                    outcome, user_lock = self._begin_mysql(connection, record)
                else:
                    outcome = self._begin_portable(alias, record)
                if isinstance(outcome, _Released):
                    taken = self._take_over(connection, record)
                    outcome = taken if not isinstance(taken, tuple) else taken[0]
                    first_claimed_at = taken[1] if isinstance(taken, tuple) else None
            except BaseException as exc:
                # Rolls back the block (or its savepoint): nothing was claimed.
                atomic.__exit__(type(exc), exc, exc.__traceback__)
                _release_user_lock(connection, user_lock)
                if _sqlite_busy(connection, exc):
                    raise _sqlite_busy_error(exc) from exc
                if function is not None and _claim_function_missing(connection, exc, function):
                    start = _CLAIM_FUNCTIONS.index(function) + 1
                    continue  # again, with the next function or the CTE
                if table_missing(exc):
                    table = IdempotencyRecord._meta.db_table
                    raise StoreMisconfigured(
                        f"database {alias!r} has no table {table!r}: run `manage.py migrate "
                        f"django_idempotency --database {alias}`"
                    ) from exc
                if isinstance(exc, DatabaseError):
                    raise StoreError(str(exc)) from exc
                raise
            break
        if isinstance(outcome, int):
            return Claim(
                record, _Held(alias, atomic, outcome, user_lock=user_lock), first_claimed_at
            )
        if isinstance(outcome, _Unwritten):
            return Claim(record, _Held(alias, atomic, None, outcome.take_over))
        # Nothing claimed: end the block now.
        try:
            atomic.__exit__(None, None, None)
        finally:
            _release_user_lock(connection, user_lock)
        return outcome

    _FINISH_SQL = (
        "UPDATE {table} SET state = %s, response_status = %s, response_headers = %s, "
        "response_body = %s WHERE id = %s"
    )

    # The claim wrote no row (PostgreSQL, READ COMMITTED): the one write of the
    # record, a plain INSERT when the key has no record at all. Should it meet
    # one (a unique violation: a live record that we could not have missed
    # while holding the advisory lock, so someone who does not take it wrote
    # it), the transaction rolls back and the request answers "unavailable".
    _FINISH_INSERT_SQL = (
        "INSERT INTO {table} (scope, key, digest, fingerprint, method, path, state, "
        "response_status, response_headers, response_body, created_at, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    # An expired record is there: taken over in place, as the claim would. No
    # row back means it became live meanwhile, as above.
    _FINISH_TAKE_OVER_SQL = (
        "INSERT INTO {table} AS r (scope, key, digest, fingerprint, method, path, state, "
        "response_status, response_headers, response_body, created_at, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (digest) DO UPDATE SET "
        "fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method, "
        "path = EXCLUDED.path, state = EXCLUDED.state, "
        "response_status = EXCLUDED.response_status, "
        "response_headers = EXCLUDED.response_headers, "
        "response_body = EXCLUDED.response_body, created_at = EXCLUDED.created_at, "
        "expires_at = EXCLUDED.expires_at "
        "WHERE r.expires_at <= EXCLUDED.created_at RETURNING r.id"
    )

    def finish(self, claim: Claim, response: StoredResponse) -> None:
        held: _Held = claim.state
        connection = connections[held.alias]
        table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
        headers = json.dumps(response.headers)
        body = _BODY_FIELD.get_db_prep_value(response.body, connection)
        # One plain statement. The ORM's queryset.update() builds and compiles
        # a query on every call, which the profile of a first request showed
        # to cost more client CPU than the claim statement.
        try:
            with connection.cursor() as cursor:
                if held.pk is None:
                    record = claim.record
                    sql = self._FINISH_TAKE_OVER_SQL if held.take_over else self._FINISH_INSERT_SQL
                    cursor.execute(
                        sql.format(table=table),
                        [
                            record.scope,
                            record.key,
                            scoped_key(record.scope, record.key),
                            record.fingerprint,
                            record.method,
                            record.path,
                            _COMPLETED,
                            response.status,
                            headers,
                            body,
                            record.created_at,
                            record.expires_at,
                        ],
                    )
                    if held.take_over and cursor.fetchone() is None:
                        raise StoreError(
                            f"A live record of key {record.key!r} was written by a request "
                            "that did not take the claim's lock; nothing was committed."
                        )
                else:
                    cursor.execute(
                        self._FINISH_SQL.format(table=table),
                        [_COMPLETED, response.status, headers, body, held.pk],
                    )
        except BaseException as exc:
            try:
                held.atomic.__exit__(type(exc), exc, exc.__traceback__)
            finally:
                _release_user_lock(connection, held.user_lock)
            if isinstance(exc, DatabaseError):
                raise StoreError(str(exc)) from exc
            raise
        # Commits the claim, the view's writes and the response together. A
        # failure here raises out of the view: nothing was committed.
        try:
            held.atomic.__exit__(None, None, None)
        finally:
            _release_user_lock(connection, held.user_lock)

    def release(self, claim: Claim, exc: BaseException | None = None) -> None:
        held: _Held = claim.state
        try:
            self._release(claim, exc)
        finally:
            # After the released marker is written: the next claimant finds it.
            _release_user_lock(connections[held.alias], held.user_lock)

    def _release(self, claim: Claim, exc: BaseException | None) -> None:
        held: _Held = claim.state
        if exc is None:
            transaction.set_rollback(True, using=held.alias)
            held.atomic.__exit__(None, None, None)
        else:
            held.atomic.__exit__(type(exc), exc, exc.__traceback__)
        if not claim.may_have_acted:
            return  # the rollback restored an earlier attempt's marker, if any
        try:
            self._keep_released(held.alias, claim)
        except DatabaseError:
            # The claim is gone either way; only the next attempt's
            # request.idempotency_key is new (as after a crash).
            logger.warning(
                "Could not keep the released attempt of %s", claim.record.key, exc_info=True
            )

    def _keep_released(self, alias: str, claim: Claim) -> None:
        """Write down, after the rollback, that this request's attempt was
        released and when its first attempt began, so that a retry gets the
        same ``request.idempotency_key``: a view that charged a payment
        provider and then failed must not charge it again under a new key.

        In its own transaction (a savepoint under ATOMIC_REQUESTS, which the
        request's rollback then takes with it). Skipped when another request
        holds the key: that one owns it now."""
        record = claim.record
        connection = connections[alias]
        if connection.vendor == "mysql":
            self._keep_released_mysql(connection, claim)
            return
        manager = IdempotencyRecord.objects.using(alias)
        with transaction.atomic(using=alias):
            if connection.vendor == "postgresql":
                # Never wait for a claimant's transaction on the unique index.
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_id(record)])
                    (got,) = cursor.fetchone()
                if not got:
                    return
            mine = manager.filter(digest=scoped_key(record.scope, record.key))
            if mine.filter(expires_at__gt=record.created_at).exclude(state=_RELEASED).exists():
                return
            mine.delete()
            if claim.anchor_expires_at <= record.created_at:
                return  # the request's TTL is over: the next attempt is a new one
            manager.create(
                scope=record.scope,
                key=record.key,
                digest=scoped_key(record.scope, record.key),
                fingerprint=record.fingerprint,
                method=record.method,
                path=record.path,
                state=_RELEASED,
                created_at=claim.anchor,
                expires_at=claim.anchor_expires_at,
            )

    def _take_over(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> Decision | tuple[int, datetime]:
        """Claim a key whose last attempt was released: (pk, when the first
        attempt claimed it) if the request is the same, else now."""
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_id(record)])
                (got,) = cursor.fetchone()
            if not got:
                return InUse()
        manager = IdempotencyRecord.objects.using(connection.alias)
        digest = scoped_key(record.scope, record.key)
        released = manager.filter(digest=digest, state=_RELEASED, expires_at__gt=record.created_at)
        # created_at first: MySQL evaluates SET clauses left to right.
        taken = released.update(
            created_at=Case(
                When(fingerprint=record.fingerprint, then=F("created_at")),
                default=Value(record.created_at),
            ),
            fingerprint=record.fingerprint,
            method=record.method,
            path=record.path,
            state=_IN_FLIGHT,
            expires_at=record.expires_at,
        )
        if not taken:
            return InUse()  # another attempt took it over first
        pk, first_claimed_at = manager.filter(digest=digest).values_list("pk", "created_at")[0]
        return int(pk), first_claimed_at

    # PostgreSQL: claim or fetch in one round trip.

    _PG_SQL = """
WITH existing AS (
    SELECT {columns} FROM {table}
    WHERE digest = %(digest)s AND expires_at > %(now)s
), lock AS (
    SELECT pg_try_advisory_xact_lock(%(lock)s) AS got
    WHERE NOT EXISTS (SELECT 1 FROM existing)
), claimed AS (
    INSERT INTO {table} (scope, key, digest, fingerprint, method, path, state,
                         response_headers, created_at, expires_at)
    SELECT %(scope)s, %(key)s, %(digest)s, %(fingerprint)s, %(method)s, %(path)s, %(state)s,
           '[]', %(now)s, %(expires)s
    FROM lock WHERE lock.got
    {upsert}
    RETURNING id
)
SELECT 'claimed', id, NULL, NULL, NULL, NULL, NULL FROM claimed
UNION ALL
SELECT 'existing', NULL, {columns} FROM existing
UNION ALL
SELECT 'locked', NULL, NULL, NULL, NULL, NULL, NULL FROM lock WHERE NOT lock.got
"""

    # An expired record is taken over in place: it no longer counts, even when
    # the purge command has not deleted it yet.
    _UPSERT = """ON CONFLICT (digest) DO UPDATE SET
        fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method,
        path = EXCLUDED.path, state = EXCLUDED.state, response_status = NULL,
        response_headers = EXCLUDED.response_headers, response_body = NULL,
        created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
    WHERE {table}.expires_at <= EXCLUDED.created_at"""

    _PG_CALLS = {
        function: f"SELECT * FROM {function}(%(scope)s, %(key)s, %(fingerprint)s, "
        "%(method)s, %(path)s, %(state)s, %(now)s, %(expires)s, %(lock)s)"
        for function in _CLAIM_FUNCTIONS
    }

    def _begin_postgresql(
        self, connection: BaseDatabaseWrapper, record: RequestRecord, function: str | None
    ) -> Decision | int | _Released | _Unwritten:
        if function is not None:
            sql = self._PG_CALLS[function]
        else:
            table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
            sql = self._PG_SQL.format(
                table=table, columns=_COLUMNS, upsert=self._UPSERT.format(table=table)
            )
        params = {
            "scope": record.scope,
            "key": record.key,
            "digest": scoped_key(record.scope, record.key),
            "fingerprint": record.fingerprint,
            "method": record.method,
            "path": record.path,
            "state": _IN_FLIGHT,
            "now": record.created_at,
            "expires": record.expires_at,
            "lock": _lock_id(record),
        }
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if function is not None and (connection.alias, function) in _missing_until:
            _claim_function_worked(connection.alias, function)
        if row is None:
            # A record committed after this statement's snapshot was taken: the
            # INSERT met it but the SELECT could not see it. Read it now.
            return self._fetch(connection.alias, record) or InUse()
        if row[0] == "claimed":
            pk: int | None = row[1]
            return _UNWRITTEN if pk is None else pk
        if row[0] == "expired":
            return _UNWRITTEN_OVER
        if row[0] == "locked":
            return InUse()
        return self._outcome(record, *row[2:])

    # SQLite: write first, so the busy timeout applies while a duplicate waits
    # for the database lock (a read first would make SQLite fail at once).

    _SQLITE_SQL = """
INSERT INTO {table} (scope, key, digest, fingerprint, method, path, state,
                     response_headers, created_at, expires_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, '[]', %s, %s)
{upsert}
RETURNING id
"""

    def _begin_sqlite(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> Decision | int | _Released:
        table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
        sql = self._SQLITE_SQL.format(
            table=table, upsert=self._UPSERT.format(table=table).replace("EXCLUDED", "excluded")
        )
        adapt = connection.ops.adapt_datetimefield_value
        params = [
            record.scope,
            record.key,
            scoped_key(record.scope, record.key),
            record.fingerprint,
            record.method,
            record.path,
            _IN_FLIGHT,
            adapt(record.created_at),
            adapt(record.expires_at),
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is not None:
            pk: int = row[0]
            return pk
        return self._fetch(connection.alias, record) or InUse()

    # SQLite before 3.35 (no RETURNING): still write first. The DELETE takes
    # the write lock (under the busy timeout) and frees the key of an expired
    # record; INSERT OR IGNORE then claims, or meets the live record.

    _SQLITE_OLD_SQL = (
        "DELETE FROM {table} WHERE digest = %s AND expires_at <= %s",
        """INSERT OR IGNORE INTO {table} (scope, key, digest, fingerprint, method, path, state,
                     response_headers, created_at, expires_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, '[]', %s, %s)""",
    )

    def _begin_old_sqlite(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> Decision | int | _Released:
        table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
        delete, insert = (sql.format(table=table) for sql in self._SQLITE_OLD_SQL)
        adapt = connection.ops.adapt_datetimefield_value
        created, expires = adapt(record.created_at), adapt(record.expires_at)
        digest = scoped_key(record.scope, record.key)
        with connection.cursor() as cursor:
            cursor.execute(delete, [digest, created])
            cursor.execute(
                insert,
                [
                    record.scope,
                    record.key,
                    digest,
                    record.fingerprint,
                    record.method,
                    record.path,
                    _IN_FLIGHT,
                    created,
                    expires,
                ],
            )
            if cursor.rowcount == 1:
                pk: int = cursor.lastrowid
                return pk
        return self._fetch(connection.alias, record) or InUse()

    # MySQL and MariaDB: a user-level lock per key holds the claim, as the
    # advisory lock does on PostgreSQL.
    #
    # InnoDB alone cannot answer a duplicate at once: a second INSERT of a key
    # that an open transaction inserted waits on that row (and, should the
    # first roll back, several such waiters deadlock), and a locking read of a
    # key that has no row takes a gap lock under REPEATABLE READ, on which two
    # claimants' INSERTs deadlock. So the claim takes GET_LOCK(name, 0), which
    # never waits, and only its holder writes the key's row. Its locking reads
    # (after a duplicate-key error) always find a row, so they lock that row
    # alone, and InnoDB's locking reads see the latest committed version
    # whatever the isolation level. The lock belongs to the session: the
    # server frees it when the connection drops (a killed worker), and the
    # store releases it once the claim's block has ended.

    def _begin_mysql(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> tuple[Decision | int | _Released, str | None]:
        """The outcome, and the name of the user lock if this claim holds it."""
        isolation = getattr(connection, "isolation_level", None)
        # A finished record answers without the lock, so concurrent retries of
        # a completed request all get the replay. Not under SERIALIZABLE (its
        # plain reads lock, and a gap lock is what must not be taken) nor
        # READ UNCOMMITTED (it would replay a response not yet committed).
        if isolation not in ("serializable", "read uncommitted"):
            outcome = self._fetch(connection.alias, record)
            if outcome is not None and not isinstance(outcome, (InUse, _Released)):
                return outcome, None
        name = _user_lock_name(connection, record)
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0)", [name])
            (got,) = cursor.fetchone()
        if got != 1:  # 0: another session holds it; NULL: an error
            return InUse(), None
        try:
            return self._claim_mysql(connection, record), name
        except BaseException:
            _release_user_lock(connection, name)
            raise

    def _claim_mysql(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> Decision | int | _Released:
        """Under the key's user lock: insert the claim, or read the row that is
        there (committed: no one else writes it) and take it over if expired."""
        table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
        quote = connection.ops.quote_name
        adapt = connection.ops.adapt_datetimefield_value
        digest = scoped_key(record.scope, record.key)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {table} ({quote('scope')}, {quote('key')}, digest, "
                    "fingerprint, method, path, state, response_headers, created_at, expires_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, '[]', %s, %s)",
                    [
                        record.scope,
                        record.key,
                        digest,
                        record.fingerprint,
                        record.method,
                        record.path,
                        _IN_FLIGHT,
                        adapt(record.created_at),
                        adapt(record.expires_at),
                    ],
                )
                pk: int = cursor.lastrowid
                return pk
        except IntegrityError as exc:
            if getattr(exc.__cause__, "args", (None,))[0] != _MYSQL_DUPLICATE_KEY:
                raise
        manager = IdempotencyRecord.objects.using(connection.alias)
        rows = list(
            manager.select_for_update()
            .filter(digest=digest)
            .values_list("pk", "expires_at", *_COLUMNS.split(", "))
        )
        if not rows:
            return InUse()  # a purge deleted it just now: the retry claims
        pk, expires_at, *columns = rows[0]
        if expires_at > record.created_at:
            return self._outcome(record, *columns)
        # Expired, and not purged yet: taken over in place.
        manager.filter(pk=pk).update(
            fingerprint=record.fingerprint,
            method=record.method,
            path=record.path,
            state=_IN_FLIGHT,
            response_status=None,
            response_headers="[]",
            response_body=None,
            created_at=record.created_at,
            expires_at=record.expires_at,
        )
        taken: int = pk
        return taken

    def _keep_released_mysql(self, connection: BaseDatabaseWrapper, claim: Claim) -> None:
        """_keep_released on MySQL and MariaDB, still under the key's user lock.
        Writes the marker without a locking read of a missing row, whose gap
        lock could deadlock with another key's INSERT under REPEATABLE READ."""
        record = claim.record
        if claim.anchor_expires_at <= record.created_at:
            return  # the request's TTL is over; an expired row is taken over later
        manager = IdempotencyRecord.objects.using(connection.alias)
        digest = scoped_key(record.scope, record.key)
        values = {
            "fingerprint": record.fingerprint,
            "method": record.method,
            "path": record.path,
            "state": _RELEASED,
            "response_status": None,
            "response_headers": "[]",
            "response_body": None,
            "created_at": claim.anchor,
            "expires_at": claim.anchor_expires_at,
        }
        with transaction.atomic(using=connection.alias):
            try:
                with transaction.atomic(using=connection.alias):
                    manager.create(scope=record.scope, key=record.key, digest=digest, **values)
                return
            except IntegrityError as exc:
                if getattr(exc.__cause__, "args", (None,))[0] != _MYSQL_DUPLICATE_KEY:
                    raise
            mine = manager.select_for_update().filter(digest=digest)
            live = mine.filter(expires_at__gt=record.created_at).exclude(state=_RELEASED)
            if live.exists():
                return
            mine.update(**values)

    # Any other database: read, then insert under the unique constraint.

    def _begin_portable(self, alias: str, record: RequestRecord) -> Decision | int | _Released:
        outcome = self._fetch(alias, record)
        if outcome is not None:
            return outcome
        manager = IdempotencyRecord.objects.using(alias)
        try:
            with transaction.atomic(using=alias):
                manager.filter(
                    digest=scoped_key(record.scope, record.key), expires_at__lte=record.created_at
                ).delete()
                row = manager.create(
                    scope=record.scope,
                    key=record.key,
                    digest=scoped_key(record.scope, record.key),
                    fingerprint=record.fingerprint,
                    method=record.method,
                    path=record.path,
                    state=State.IN_FLIGHT,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                )
        except IntegrityError:
            return self._fetch(alias, record) or InUse()
        pk: int = row.pk
        return pk

    def _fetch(self, alias: str, record: RequestRecord) -> Decision | _Released | None:
        """The outcome that the live record of (scope, key) gives, if there is one."""
        rows = list(
            IdempotencyRecord.objects.using(alias)
            .filter(digest=scoped_key(record.scope, record.key), expires_at__gt=record.created_at)
            .values_list(*_COLUMNS.split(", "))[:1]
        )
        if not rows:
            return None
        return self._outcome(record, *rows[0])

    def _outcome(
        self,
        record: RequestRecord,
        fingerprint: str,
        state: str,
        status: int | None,
        headers: str | None,
        body: Any,
    ) -> Decision | _Released:
        if state == _RELEASED:
            return _RELEASED_FOUND
        response = None
        if state == _COMPLETED and status is not None:
            response = StoredResponse(
                status=status,
                headers=[(name, value) for name, value in json.loads(headers or "[]")],
                body=bytes(body) if body is not None else b"",
            )
        return outcome_of(record, fingerprint, response)


class _Purge:
    """Deletes the records of one database that expired by ``now``, a batch at a time."""

    def __init__(self, alias: str, now: datetime, created_before: datetime | None) -> None:
        self.alias = alias
        self.now = now
        self.created_before = created_before

    def queryset(self) -> Any:
        qs = IdempotencyRecord.objects.using(self.alias).filter(expires_at__lte=self.now)
        if self.created_before is not None:
            qs = qs.filter(created_at__lt=self.created_before)
        return qs

    def count(self) -> int:
        count: int = self.queryset().count()
        return count

    def batch(self, size: int) -> int | None:
        """Delete up to ``size`` rows; the number deleted, or None when none are left."""
        connection = connections[self.alias]
        if connection.vendor == "postgresql":
            return self._batch_postgresql(connection, size)
        if connection.vendor == "mysql":
            return self._batch_mysql(size)
        pks = list(self.queryset().order_by("expires_at").values_list("pk", flat=True)[:size])
        if not pks:
            return None
        # Checks the expiry again: the ORM delete is a separate statement.
        deleted: int = self.queryset().filter(pk__in=pks)._raw_delete(self.alias)
        return deleted

    def _batch_postgresql(self, connection: Any, size: int) -> int | None:
        table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
        condition = "expires_at <= %(now)s"
        if self.created_before is not None:
            condition += " AND created_at < %(created_before)s"
        # MATERIALIZED: the batch is chosen once. As a plain IN (subquery) the
        # planner may rescan it inside a nested loop, and with ties in
        # expires_at each rescan can pick other rows: more than a batch goes.
        sql = (
            f"WITH batch AS MATERIALIZED ("
            f" SELECT id FROM {table} WHERE {condition}"
            "  ORDER BY expires_at LIMIT %(size)s FOR UPDATE SKIP LOCKED"
            f") DELETE FROM {table} USING batch"
            f" WHERE {table}.id = batch.id AND {condition}"
        )
        params = {"now": self.now, "created_before": self.created_before, "size": size}
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            deleted: int = cursor.rowcount
        # Zero rows: none left, or every one left is locked by another purge,
        # which deletes it.
        return deleted or None

    def _batch_mysql(self, size: int) -> int | None:
        # SKIP LOCKED (MySQL 8.0.1, MariaDB 10.6): a batch never waits on a
        # request that is taking an expired row over in place. Concurrent
        # purges (cron on several hosts) take turns, a batch at a time, under
        # a user lock: two batches picking rows at once could still deadlock
        # on InnoDB's row locks.
        connection = connections[self.alias]
        database = connection.settings_dict["NAME"]
        name = (
            "django_idempotency:purge:"
            + hashlib.blake2b(str(database).encode(), digest_size=16).hexdigest()
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, %s)", [name, PURGE_LOCK_WAIT])
            (got,) = cursor.fetchone()
        if got != 1:
            raise OperationalError(f"Another purge held the lock {name} for {PURGE_LOCK_WAIT} s.")
        try:
            with transaction.atomic(using=self.alias):
                pks = list(
                    self.queryset()
                    .select_for_update(skip_locked=True)
                    .order_by("expires_at")
                    .values_list("pk", flat=True)[:size]
                )
                if not pks:
                    return None
                # The rows are locked by this transaction, so still expired.
                manager = IdempotencyRecord.objects.using(self.alias)
                deleted: int = manager.filter(pk__in=pks)._raw_delete(self.alias)
            return deleted
        finally:
            _release_user_lock(connection, name)
