"""Large stored bodies on PostgreSQL: compressed with LZ4 (migration 0002)."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.db import connection

from django_idempotency.models import IdempotencyRecord
from tests.helpers import make_record

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's TOAST"),
    pytest.mark.django_db,
]

# About 1 MB of JSON that compresses as API answers do (repeated keys, varied values).
BODY = json.dumps(
    [{"id": n, "sku": f"abc-{n % 997}", "quantity": n % 7, "note": "order"} for n in range(14000)]
).encode()


def test_the_body_column_compresses_with_lz4() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = 'response_body'",
            [IdempotencyRecord._meta.db_table],
        )
        assert cursor.fetchone() == ("l",)


def test_a_large_body_is_stored_with_lz4_and_reads_back_whole() -> None:
    record = make_record("big", body=BODY)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_column_compression(response_body), pg_column_size(response_body) "
            f"FROM {IdempotencyRecord._meta.db_table} WHERE id = %s",
            [record.pk],
        )
        method, size = cursor.fetchone()
    assert method == "lz4"
    assert size < len(BODY) / 3
    assert bytes(IdempotencyRecord.objects.get(pk=record.pk).response_body) == BODY


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor refuses to run in a transaction
def test_sqlmigrate_shows_the_compression() -> None:
    out = io.StringIO()
    call_command("sqlmigrate", "django_idempotency", "0002", stdout=out)
    assert "SET COMPRESSION lz4" in out.getvalue()
