"""A reference store for the benchmark: the database store as it claimed before
migration 0005 (write first).

``WriteFirstStore`` calls ``django_idempotency_claim_v1`` where the store calls
v2: the claim inserts an in-flight row and the completion updates it (two
writes of the record per first request). Everything else is the store's own
code, so the benchmark compares the two claim designs in the same run, on the
same machine. Not for use outside the benchmark.
"""

from __future__ import annotations

from django_idempotency.stores import database
from django_idempotency.stores.database import DatabaseStore


class WriteFirstStore(DatabaseStore):
    _PG_CALLS = {
        **DatabaseStore._PG_CALLS,
        database.CLAIM_FUNCTION: DatabaseStore._PG_CALLS[database.CLAIM_FUNCTION_V1],
    }
