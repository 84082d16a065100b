"""Stored response bodies compressed with LZ4 on PostgreSQL 14 and newer.

PostgreSQL compresses a value of more than about 2 kB before it moves it out
of line (TOAST), by default with its own pglz. Compressing 1 MB of JSON took
about 7.5 ms of server CPU with pglz against about 1 ms with LZ4, for a
stored size about 15 % larger (``psql``, 50 such bodies); the benchmark's "How
cost grows" part had found a 1 MB first request spending 16.6 ms of database
CPU. Replays decompress faster too. Values of less than about 2 kB are never compressed,
so small responses are unchanged.

``ALTER COLUMN ... SET COMPRESSION`` changes how new values are compressed
only: it rewrites nothing and holds its lock for a moment. Existing values
stay pglz and read as before. It needs PostgreSQL 14 and a server built with
LZ4 (Debian's, Ubuntu's, the official images and the main cloud services
are); elsewhere the migration leaves the column as it is, and a later
``migrate`` after an upgrade does not retry it (run this migration's SQL by
hand then, or ``migrate django_idempotency 0005`` and forward again).
"""

from typing import Any

from django.db import migrations

TABLE = "django_idempotency_idempotencyrecord"

FORWARDS = f"""
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE {TABLE} ALTER COLUMN response_body SET COMPRESSION lz4';
    END IF;
EXCEPTION
    -- A server built without LZ4: "compression method lz4 not supported".
    WHEN feature_not_supported OR invalid_parameter_value THEN
        RAISE NOTICE 'response_body keeps the server''s default compression: %', SQLERRM;
END
$$;
"""

BACKWARDS = f"""
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE {TABLE} ALTER COLUMN response_body SET COMPRESSION DEFAULT';
    END IF;
END
$$;
"""


class RunSQLOnPostgreSQL(migrations.RunSQL):
    """RunSQL that only PostgreSQL databases run (and ``sqlmigrate`` shows)."""

    def database_forwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, *args)

    def database_backwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, *args)


class Migration(migrations.Migration):
    dependencies = [
        ("django_idempotency", "0005_postgresql_claim_without_write"),
    ]

    operations = [
        RunSQLOnPostgreSQL(sql=FORWARDS, reverse_sql=BACKWARDS),
    ]
