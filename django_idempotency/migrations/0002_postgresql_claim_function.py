"""PostgreSQL only: the function with which the database store claims keys, and
LZ4 compression of stored bodies (kept when migrating back: harmless). Other
databases run nothing here."""

from typing import Any

from django.db import migrations

from django_idempotency.stores.database import sql


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
        ("django_idempotency", "0001_initial"),
    ]

    operations = [
        RunSQLOnPostgreSQL(
            sql=[sql.CREATE_CLAIM_FUNCTION, sql.BODY_LZ4],
            reverse_sql=[sql.DROP_CLAIM_FUNCTION],
        ),
    ]
