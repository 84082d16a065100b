"""A reference store for the benchmark: the database store with a claim that
writes first on PostgreSQL.

``WriteFirstStore`` takes the advisory lock and inserts the in-flight row
before the view, and the completion updates it (two writes of the record per
first request), where the store's function writes nothing until the end.
Everything else is the store's own code, so the benchmark compares the two
claim designs in the same run, on the same machine. Not for use outside the
benchmark.
"""

from __future__ import annotations

from typing import Any

from django_idempotency.stores.base import InUse, RequestRecord
from django_idempotency.stores.database import locks, sql, store


class WriteFirstStore(store.DatabaseStore):
    def _begin_postgresql(self, connection: Any, record: RequestRecord) -> Any:
        outcome = self._fetch(connection.alias, record)
        if outcome is not None:
            return outcome
        if not locks.try_advisory_lock(connection, record):
            return InUse()
        row = store._row(connection, record, store._IN_FLIGHT)
        with connection.cursor() as cursor:
            cursor.execute(sql.insert(connection, tail=sql.take_over(connection)), row)
            claimed = cursor.fetchone()
        return claimed[0] if claimed else self._fetch(connection.alias, record) or InUse()
