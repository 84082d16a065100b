"""``manage.py purge_idempotency_keys``: delete expired idempotency records.

What goes
---------
A record goes once its own ``expires_at`` has passed: the store already
ignores it from then on. ``expires_at`` is the authority, not ``created_at`` plus
``IDEMPOTENCY_TTL``, because ``@idempotent(ttl=...)`` gives views their own TTL.
``--older-than`` only *adds* a condition (created before now minus the
duration), so it can keep expired records longer but never deletes a record that
is still valid or in flight: a client may still retry with a valid key, and
deleting its record would let the operation run twice. To keep records for a
shorter time, lower ``IDEMPOTENCY_TTL``.

How
---
The cut-off is fixed when the command starts, then rows go in batches of
``--batch-size`` primary keys, each batch one short statement in its own
transaction (autocommit), so no lock is held for long and no row is loaded
into Python. On PostgreSQL a batch is::

    WITH batch AS MATERIALIZED (
        SELECT id FROM t WHERE expires_at <= %s ORDER BY expires_at LIMIT %s
        FOR UPDATE SKIP LOCKED)
    DELETE FROM t USING batch WHERE t.id = batch.id AND expires_at <= %s

``SKIP LOCKED`` lets several purges (cron on several hosts) run at once without
waiting on each other or deleting a row twice, and never waits on a request
that is taking over an expired key in place. Each purge counts the rows that
its own statements deleted (the cursor's rowcount), so the counts add up.
Elsewhere (SQLite, MySQL...) a batch selects primary keys through the ORM, then
deletes them in one statement that checks the expiry again; a row that another
purge deleted meanwhile is simply not counted.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.utils import timezone

from ...conf import conf
from ...models import IdempotencyRecord
from ...stores import get_store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_duration(value: str) -> timedelta:
    """``"90"`` (seconds), ``"30m"``, ``"48h"``, ``"7d"`` or ``"2w"`` as a timedelta."""
    match = _DURATION.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a duration: use seconds or a number with s, m, h, d or w "
            "(e.g. 3600, 30m, 48h, 7d)"
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[unit.lower() or "s"])


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise CommandError(f"--batch-size must be a positive whole number, not {value!r}")
    return number


class Command(BaseCommand):
    help = (
        "Delete idempotency records whose expiry has passed, in short batches. "
        "Safe to run from cron on several hosts at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only say how many records would be deleted.",
        )
        parser.add_argument(
            "--older-than",
            metavar="DURATION",
            help="Also require the record to be created more than DURATION ago "
            "(seconds, or 30m, 48h, 7d, 2w), to keep expired records longer. "
            "Records that have not expired are never deleted.",
        )
        parser.add_argument(
            "--batch-size",
            default="5000",
            metavar="N",
            help="Rows deleted per statement and transaction (default 5000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity: int = options["verbosity"]
        batch_size = _positive_int(str(options["batch_size"]))
        older_than: timedelta | None = None
        if options["older_than"] is not None:
            try:
                older_than = parse_duration(options["older_than"])
            except ValueError as exc:
                raise CommandError(f"--older-than: {exc}") from exc

        store = get_store()
        if not store.needs_purge:
            if verbosity >= 1:
                self.stdout.write(
                    f"{type(store).__name__} expires idempotency keys by itself; "
                    "there is nothing to purge."
                )
            return

        now = timezone.now()
        created_before = now - older_than if older_than is not None else None
        if older_than is not None and older_than < conf.IDEMPOTENCY_TTL and verbosity >= 1:
            self.stderr.write(
                self.style.WARNING(
                    f"--older-than {options['older_than']} is shorter than IDEMPOTENCY_TTL; "
                    "records are still deleted only once they have expired."
                )
            )

        purge = Purge(conf.IDEMPOTENCY_DATABASE, now, created_before)
        if options["dry_run"]:
            count = purge.count()
            if verbosity >= 1:
                self.stdout.write(f"Would delete {count} expired idempotency record(s).")
            return

        total = 0
        batch = 0
        while True:
            deleted = purge.batch(batch_size)
            if deleted is None:
                break
            batch += 1
            total += deleted
            if verbosity >= 2:
                self.stdout.write(f"Batch {batch}: deleted {deleted} ({total} so far).")
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"Deleted {total} expired idempotency record(s)."))


class Purge:
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
