"""Deleting expired records a batch at a time (docs/operating.rst, "Purging").

Each batch is one short statement in its own transaction, so no lock is held
for long, no row is loaded into Python, and each purge counts only the rows
its own statements deleted, so concurrent purges' counts add up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connections, transaction

from ...models import IdempotencyRecord
from . import locks, sql


class Purge:
    """Deletes the records of one database that expired by ``now``."""

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
            return self._batch_mysql(connection, size)
        pks = list(self.queryset().order_by("expires_at").values_list("pk", flat=True)[:size])
        if not pks:
            return None
        # Checks the expiry again: another purge may have deleted a row meanwhile.
        deleted: int = self.queryset().filter(pk__in=pks)._raw_delete(self.alias)
        return deleted

    def _batch_postgresql(self, connection: Any, size: int) -> int | None:
        # SKIP LOCKED: concurrent purges never wait on each other or delete a
        # row twice, and never wait on a request taking an expired key over.
        condition = "expires_at <= %(now)s"
        if self.created_before is not None:
            condition += " AND created_at < %(created_before)s"
        table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
        params = {"now": self.now, "created_before": self.created_before, "size": size}
        with connection.cursor() as cursor:
            cursor.execute(sql.PURGE_BATCH.format(table=table, condition=condition), params)
            deleted: int = cursor.rowcount
        # Zero: none left, or every row left is locked by another purge, which deletes it.
        return deleted or None

    def _batch_mysql(self, connection: Any, size: int) -> int | None:
        # SKIP LOCKED: a batch never waits on a request taking an expired row
        # over. The purge lock: two batches choosing rows at once could still
        # deadlock on InnoDB's row locks.
        name = locks.get_purge_lock(connection)
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
                # Locked by this transaction, so still expired.
                manager = IdempotencyRecord.objects.using(self.alias)
                deleted: int = manager.filter(pk__in=pks)._raw_delete(self.alias)
            return deleted
        finally:
            locks.release_user_lock(connection, name)
