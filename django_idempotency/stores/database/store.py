"""The database store: records in the ``IdempotencyRecord`` table.

A claim is made in a transaction (a savepoint under ``ATOMIC_REQUESTS``) that
stays open while the view runs, so the view's writes and its stored response
commit together or not at all; a rollback or a dropped connection leaves
nothing behind. Records are found by ``digest`` (``keys.scoped_key``), never
by the scope and key columns, whose collation may ignore case. How each
vendor claims, and why, is in docs/databases.rst.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

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

from ...conf import conf
from ...errors import table_missing
from ...keys import scoped_key
from ...models import IdempotencyRecord
from ..base import (
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
from . import checks as store_checks
from . import locks, sql
from .purge import Purge

logger = logging.getLogger("django_idempotency.stores.database")

State = IdempotencyRecord.State
# The stored strings. (str(), not .value: mypy with python_version 3.10 types
# the members of a TextChoices that has labels as tuples.)
_IN_FLIGHT = str(State.IN_FLIGHT)
_COMPLETED = str(State.COMPLETED)
# A released attempt, kept until its TTL ends so that the next attempt of the
# same request gets the same request.idempotency_key. No view, replay or
# conflict ever sees it.
_RELEASED = str(State.RELEASED)
# What a lookup reads of a record.
_COLUMNS = ("fingerprint", "state", "response_status", "response_headers", "response_body")
# Adapts the body for the database at hand, as the ORM would (bytea, BLOB, ...).
_BODY_FIELD = cast(
    "models.BinaryField[Any, Any]", IdempotencyRecord._meta.get_field("response_body")
)
# MySQL's ER_DUP_ENTRY (MariaDB's too).
_MYSQL_DUPLICATE_KEY = 1062
# PostgreSQL: undefined_function, insufficient_privilege.
_CANNOT_CALL = frozenset({"42883", "42501"})


class _Released:
    """What begin() found: a released attempt, to take over."""


_RELEASED_FOUND = _Released()


@dataclass(frozen=True)
class _Unwritten:
    """PostgreSQL under READ COMMITTED: the key is held by the advisory lock
    alone; finish() inserts the record, taking an expired one over if ``take_over``."""

    take_over: bool


@dataclass
class _Held:
    """What a DatabaseStore claim holds: the open block and the claimed row."""

    alias: str
    atomic: transaction.Atomic
    #: The claimed row, or None when the claim wrote none and finish() inserts.
    pk: int | None
    #: With pk None: an expired record of the key is there, to take over.
    take_over: bool = False
    #: MySQL and MariaDB: the key's user lock, released once the block has ended.
    user_lock: str | None = None


def _row(
    connection: BaseDatabaseWrapper,
    record: RequestRecord,
    state: str,
    response: StoredResponse | None = None,
) -> list[Any]:
    """The parameters of ``sql.insert()``: the record, in ``sql.COLUMNS`` order."""
    adapt = connection.ops.adapt_datetimefield_value
    return [
        record.scope,
        record.key,
        scoped_key(record.scope, record.key),
        record.fingerprint,
        record.method,
        record.path,
        state,
        response.status if response else None,
        json.dumps(response.headers) if response else "[]",
        _BODY_FIELD.get_db_prep_value(response.body, connection) if response else None,
        adapt(record.created_at),
        adapt(record.expires_at),
    ]


def _values(
    record: RequestRecord, state: str, created_at: datetime, expires_at: datetime
) -> dict[str, Any]:
    """An unfinished record's fields, for the ORM (all but scope, key and digest)."""
    return {
        "fingerprint": record.fingerprint,
        "method": record.method,
        "path": record.path,
        "state": state,
        "response_status": None,
        "response_headers": "[]",
        "response_body": None,
        "created_at": created_at,
        "expires_at": expires_at,
    }


def _store_error(connection: BaseDatabaseWrapper, exc: DatabaseError) -> StoreError:
    """What a database error in begin() means to the client."""
    alias = connection.alias
    if connection.vendor == "sqlite" and isinstance(exc, OperationalError) and "locked" in str(exc):
        # Whoever holds SQLite's write lock may be running any key: its claim
        # cannot be read, so "in use" would be a guess. Busy is the truth.
        return StoreError(
            "The SQLite database stayed locked by another request's transaction for longer "
            f"than its busy timeout (the 'timeout' database option): {exc}"
        )
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate in _CANNOT_CALL and sql.CLAIM_FUNCTION in str(exc):
        return StoreMisconfigured(
            f"database {alias!r} cannot call {sql.CLAIM_SIGNATURE} ({str(exc).splitlines()[0]}): "
            f"run `manage.py migrate django_idempotency --database {alias}` "
            "(check --database names the fix)"
        )
    if table_missing(exc):
        return StoreMisconfigured(
            f"database {alias!r} has no table {IdempotencyRecord._meta.db_table!r}: run "
            f"`manage.py migrate django_idempotency --database {alias}`"
        )
    return StoreError(str(exc))


try:
    from psycopg import ClientCursor as _ClientCursor
    from psycopg import IsolationLevel as _IsolationLevel
    from psycopg.pq import TransactionStatus as _TransactionStatus
except ImportError:  # psycopg2, or no PostgreSQL at all
    _ClientCursor = None  # type: ignore[assignment,misc]


def _claim_params(record: RequestRecord) -> list[Any]:
    """The parameters of ``sql.CLAIM_CALL``, in its order."""
    return [
        record.scope,
        record.key,
        record.fingerprint,
        record.method,
        record.path,
        _IN_FLIGHT,
        record.created_at,
        record.expires_at,
        locks.lock_id(record),
    ]


def _execute_claim(cursor: Any, params: list[Any]) -> None:
    """Send the claim; where psycopg 3 is about to send ``BEGIN`` before it,
    the claim's own query carries that ``BEGIN`` instead, so that both take
    one round trip.

    psycopg sends ``BEGIN`` as a query of its own before the first statement
    of a transaction, and has no public switch for "the next query begins it":
    for the claim's one statement its connection is told that it is in
    autocommit mode (the private flag that its public setter would refuse to
    turn back once a transaction is open), then put back. Should a psycopg
    release stop reading the flag, the server gets two BEGINs and warns, and
    nothing else changes. Only where psycopg would begin the transaction
    itself with the claim (the claim's block is the transaction; not a
    savepoint, not READ ONLY or DEFERRABLE transactions).
    """
    raw = cursor.cursor.connection if _client_side(cursor) else None
    if (
        raw is None
        or getattr(raw, "_autocommit", None) is not False
        or raw.pgconn.transaction_status != _TransactionStatus.IDLE
        or getattr(raw, "_pipeline", None) is not None
        or raw.read_only is not None
        or raw.deferrable is not None
    ):
        cursor.execute(sql.CLAIM_CALL, params)
        return
    begin = "BEGIN"
    if raw.isolation_level is not None:
        level = _IsolationLevel(raw.isolation_level).name.replace("_", " ")
        begin += f" ISOLATION LEVEL {level}"
    raw._autocommit = True
    try:
        cursor.execute(f"{begin}; {sql.CLAIM_CALL}", params)
    finally:
        raw._autocommit = False
    cursor.nextset()  # past BEGIN's result


def _client_side(cursor: Any) -> bool:
    """Whether the cursor is psycopg 3's binding parameters client-side
    (Django's default), which sends one query that may hold two statements."""
    return _ClientCursor is not None and isinstance(cursor.cursor, _ClientCursor)


def _commit_with(connection: BaseDatabaseWrapper, cursor: Any, held: _Held) -> str:
    """``"; COMMIT"`` if the claim's last write may carry the COMMIT of its
    block, so that both take one round trip; else ``""``.

    Only when the block is the transaction itself (not a savepoint), nothing
    asked for its rollback, and the driver sends statements as text (psycopg
    3 binding parameters client-side, Django's default: one query may then
    hold two statements). The block's exit then finds the transaction ended,
    and runs the on_commit callbacks as after its own COMMIT. If the write
    fails, the COMMIT is not run and the block rolls back as before.
    """
    if (
        _client_side(cursor)
        and connection.atomic_blocks == [held.atomic]
        and connection.commit_on_exit
        and not connection.needs_rollback
        and not connection.closed_in_transaction
    ):
        return "; COMMIT"
    return ""


class DatabaseStore(Store):
    """Stores records with the Django ORM, in the view's own transaction."""

    rolls_back_view_writes = True

    @property
    def alias(self) -> str:
        return conf.IDEMPOTENCY_DATABASE

    @classmethod
    def check(cls) -> list[checks.CheckMessage]:
        return store_checks.check_settings()

    def claims_held(self) -> tuple[int, datetime | None] | None:
        return locks.claims_held(self.alias)

    def purge_expired(
        self,
        *,
        now: datetime | None = None,
        created_before: datetime | None = None,
        batch_size: int = 5000,
        dry_run: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        purge = Purge(self.alias, now or timezone.now(), created_before)
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
        atomic = transaction.atomic(using=alias)
        try:
            atomic.__enter__()
        except DatabaseError as exc:
            raise _store_error(connection, exc) from exc
        first_claimed_at = None
        user_lock = None
        try:
            outcome: Decision | int | _Released | _Unwritten
            if connection.vendor == "postgresql":
                outcome = self._begin_postgresql(connection, record)
            elif connection.vendor == "sqlite":
                outcome = self._begin_sqlite(connection, record)
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
            locks.release_user_lock(connection, user_lock)
            if isinstance(exc, DatabaseError):
                raise _store_error(connection, exc) from exc
            raise
        if isinstance(outcome, int):
            held = _Held(alias, atomic, outcome, user_lock=user_lock)
            return Claim(record, held, first_claimed_at)
        if isinstance(outcome, _Unwritten):
            return Claim(record, _Held(alias, atomic, None, outcome.take_over))
        # Nothing claimed: end the block now.
        try:
            atomic.__exit__(None, None, None)
        finally:
            locks.release_user_lock(connection, user_lock)
        return outcome

    def finish(self, claim: Claim, response: StoredResponse) -> None:
        held: _Held = claim.state
        connection = connections[held.alias]
        # Plain statements: the ORM would build and compile a query on every call.
        try:
            with connection.cursor() as cursor:
                # Not when taking over: its RETURNING decides whether to commit.
                commit = "" if held.take_over else _commit_with(connection, cursor, held)
                if held.pk is None:
                    # The claim wrote no row (PostgreSQL, READ COMMITTED). A
                    # live record met here was written by someone not taking
                    # the advisory lock: the request rolls back, unavailable.
                    tail = sql.take_over(connection) if held.take_over else ""
                    row = _row(connection, claim.record, _COMPLETED, response)
                    cursor.execute(sql.insert(connection, tail=tail) + commit, row)
                    if held.take_over and cursor.fetchone() is None:
                        raise StoreError(
                            f"A live record of key {claim.record.key!r} was written by a "
                            "request that did not take the claim's lock; nothing was committed."
                        )
                else:
                    table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
                    body = _BODY_FIELD.get_db_prep_value(response.body, connection)
                    headers = json.dumps(response.headers)
                    cursor.execute(
                        sql.FINISH.format(table=table) + commit,
                        [_COMPLETED, response.status, headers, body, held.pk],
                    )
        except BaseException as exc:
            try:
                held.atomic.__exit__(type(exc), exc, exc.__traceback__)
            finally:
                locks.release_user_lock(connection, held.user_lock)
            if isinstance(exc, DatabaseError):
                raise StoreError(str(exc)) from exc
            raise
        # Commits the claim, the view's writes and the response together. A
        # failure here raises out of the view: nothing was committed.
        try:
            held.atomic.__exit__(None, None, None)
        finally:
            locks.release_user_lock(connection, held.user_lock)

    def release(self, claim: Claim, exc: BaseException | None = None) -> None:
        held: _Held = claim.state
        try:
            if exc is None:
                transaction.set_rollback(True, using=held.alias)
                held.atomic.__exit__(None, None, None)
            else:
                held.atomic.__exit__(type(exc), exc, exc.__traceback__)
            # Without may_have_acted the rollback restored an earlier attempt's marker.
            if claim.may_have_acted:
                try:
                    self._keep_released(held.alias, claim)
                except DatabaseError:
                    # The claim is gone either way; only the next attempt's
                    # request.idempotency_key is new (as after a crash).
                    key = claim.record.key
                    logger.warning("Could not keep the released attempt of %s", key, exc_info=True)
        finally:
            # After the released marker is written: the next claimant finds it.
            locks.release_user_lock(connections[held.alias], held.user_lock)

    def _keep_released(self, alias: str, claim: Claim) -> None:
        """Write down, after the rollback, that this request's attempt was
        released and when its first attempt began, so that a retry gets the
        same ``request.idempotency_key``: a view that charged a payment
        provider and then failed must not charge it again under a new key.
        Skipped when another request holds the key: that one owns it now."""
        record = claim.record
        if claim.anchor_expires_at <= record.created_at:
            return  # the request's TTL is over: the next attempt is a new one
        connection = connections[alias]
        manager = IdempotencyRecord.objects.using(alias)
        digest = scoped_key(record.scope, record.key)
        values = _values(record, _RELEASED, claim.anchor, claim.anchor_expires_at)
        # A savepoint under ATOMIC_REQUESTS, which the request's rollback takes with it.
        with transaction.atomic(using=alias):
            # Never wait for a claimant's transaction on the unique index.
            if connection.vendor == "postgresql" and not locks.try_advisory_lock(
                connection, record
            ):
                return
            # Insert first: on MySQL a locking read of a missing row takes a gap
            # lock that could deadlock with another key's INSERT.
            try:
                with transaction.atomic(using=alias):
                    manager.create(scope=record.scope, key=record.key, digest=digest, **values)
                return
            except IntegrityError:
                pass
            mine = manager.select_for_update().filter(digest=digest)
            if mine.filter(expires_at__gt=record.created_at).exclude(state=_RELEASED).exists():
                return
            mine.update(**values)

    def _take_over(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> Decision | tuple[int, datetime]:
        """Claim a key whose last attempt was released: (pk, when the first
        attempt claimed it) if the request is the same, else now."""
        if connection.vendor == "postgresql" and not locks.try_advisory_lock(connection, record):
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

    def _begin_postgresql(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> Decision | int | _Released | _Unwritten:
        with connection.cursor() as cursor:
            _execute_claim(cursor, _claim_params(record))
            row = cursor.fetchone()
        if row is None:
            # REPEATABLE READ: the insert met a record committed after the
            # snapshot, which the function cannot see.
            return self._fetch(connection.alias, record) or InUse()
        if row[0] == "claimed":
            pk: int | None = row[1]
            return _Unwritten(take_over=False) if pk is None else pk
        if row[0] == "expired":
            return _Unwritten(take_over=True)
        if row[0] == "locked":
            return InUse()
        return self._outcome(record, *row[2:])

    def _begin_sqlite(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> Decision | int | _Released:
        """Write first, so that a duplicate waits for the write lock under the
        busy timeout (a read first would fail at once)."""
        row = _row(connection, record, _IN_FLIGHT)
        with connection.cursor() as cursor:
            if connection.features.can_return_columns_from_insert:
                cursor.execute(sql.insert(connection, tail=sql.take_over(connection)), row)
                claimed = cursor.fetchone()
                if claimed is not None:
                    pk: int = claimed[0]
                    return pk
            else:
                # SQLite before 3.35 (no RETURNING): the DELETE takes the write
                # lock and frees the key of an expired record.
                table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
                cursor.execute(
                    f"DELETE FROM {table} WHERE digest = %s AND expires_at <= %s",
                    [row[2], row[10]],
                )
                cursor.execute(sql.insert(connection, head="INSERT OR IGNORE"), row)
                if cursor.rowcount == 1:
                    lastrowid: int = cursor.lastrowid
                    return lastrowid
        return self._fetch(connection.alias, record) or InUse()

    def _begin_mysql(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> tuple[Decision | int | _Released, str | None]:
        """The outcome, and the name of the user lock if this claim holds it.

        Only the holder of the key's user lock writes its row, so InnoDB never
        makes a duplicate wait on a row lock, and no claim takes a gap lock
        that two INSERTs could deadlock on."""
        isolation = getattr(connection, "isolation_level", None)
        # A finished record answers without the lock, so concurrent retries of
        # a completed request all get the replay. Not under SERIALIZABLE (its
        # plain reads lock) nor READ UNCOMMITTED (it would replay a response
        # not yet committed).
        if isolation not in ("serializable", "read uncommitted"):
            outcome = self._fetch(connection.alias, record)
            if outcome is not None and not isinstance(outcome, (InUse, _Released)):
                return outcome, None
        name = locks.get_user_lock(connection, record)
        if name is None:
            return InUse(), None
        try:
            return self._claim_mysql(connection, record), name
        except BaseException:
            locks.release_user_lock(connection, name)
            raise

    def _claim_mysql(
        self, connection: BaseDatabaseWrapper, record: RequestRecord
    ) -> Decision | int | _Released:
        """Under the key's user lock: insert the claim, or read the row that is
        there (committed: no one else writes it) and take it over if expired."""
        digest = scoped_key(record.scope, record.key)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.insert(connection), _row(connection, record, _IN_FLIGHT))
                pk: int = cursor.lastrowid
                return pk
        except IntegrityError as exc:
            if getattr(exc.__cause__, "args", (None,))[0] != _MYSQL_DUPLICATE_KEY:
                raise
        manager = IdempotencyRecord.objects.using(connection.alias)
        # A locking read sees the latest committed row whatever the isolation level.
        rows = list(
            manager.select_for_update()
            .filter(digest=digest)
            .values_list("pk", "expires_at", *_COLUMNS)
        )
        if not rows:
            return InUse()  # a purge deleted it just now: the retry claims
        pk, expires_at, *columns = rows[0]
        if expires_at > record.created_at:
            return self._outcome(record, *columns)
        values = _values(record, _IN_FLIGHT, record.created_at, record.expires_at)
        manager.filter(pk=pk).update(**values)
        taken: int = pk
        return taken

    def _begin_portable(self, alias: str, record: RequestRecord) -> Decision | int | _Released:
        """Any other database: read, then insert under the unique constraint."""
        outcome = self._fetch(alias, record)
        if outcome is not None:
            return outcome
        manager = IdempotencyRecord.objects.using(alias)
        digest = scoped_key(record.scope, record.key)
        try:
            with transaction.atomic(using=alias):
                manager.filter(digest=digest, expires_at__lte=record.created_at).delete()
                values = _values(record, _IN_FLIGHT, record.created_at, record.expires_at)
                row = manager.create(scope=record.scope, key=record.key, digest=digest, **values)
        except IntegrityError:
            return self._fetch(alias, record) or InUse()
        pk: int = row.pk
        return pk

    def _fetch(self, alias: str, record: RequestRecord) -> Decision | _Released | None:
        """The outcome that the live record of (scope, key) gives, if there is one."""
        rows = list(
            IdempotencyRecord.objects.using(alias)
            .filter(digest=scoped_key(record.scope, record.key), expires_at__gt=record.created_at)
            .values_list(*_COLUMNS)[:1]
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
