"""Records found by a digest of (scope, key), compared byte for byte.

The store looked records up by ``scope = %s AND key = %s``, which compares by
the columns' collation. MySQL's and MariaDB's default collations ignore case
and trailing spaces, so ``Case-X`` found ``case-x``'s record, ``"pad "`` found
``pad``'s, and scope ``client:c1`` was served ``client:C1``'s stored response.
Now every backend finds a record by ``digest``: the SHA-256 of the scope's
UTF-8, a NUL and the key's UTF-8, in lowercase hex (``keys.scoped_key``, the
name the Redis store already gives a record). Hex digits of one case compare
exactly under every collation, so the column needs none of its own. The unique
constraint moves from (scope, key) to ``digest``; scope and key stay for the
admin.

Existing rows get their digest here, in batches. On PostgreSQL the claim
functions of migrations 0003 and 0005 keep their names and arguments and now
look up, insert and take over by the digest, which they compute from their
scope and key arguments as the store does in Python (PostgreSQL's
``sha256()``, version 11 and later).

Deploy with the old code stopped, or accept that while old and new code run
side by side, the old code's first requests fail with 503 (their INSERT has no
digest); no request runs twice: both versions take the same PostgreSQL
advisory lock.
"""

import hashlib
from importlib import import_module
from typing import Any

from django.db import migrations, models

FUNCTION_V1 = "django_idempotency_claim_v1"
FUNCTION_V2 = "django_idempotency_claim_v2"
# keys.scoped_key, in SQL. decode(): a NUL byte whatever
# standard_conforming_strings says.
DIGEST = (
    "encode(sha256(convert_to(p_scope, 'UTF8') || decode('00', 'hex') "
    "|| convert_to(p_key, 'UTF8')), 'hex')"
)
BATCH = 2000

CREATE_V1 = f"""
CREATE OR REPLACE FUNCTION {FUNCTION_V1}(
    p_scope varchar, p_key varchar, p_fingerprint varchar, p_method varchar,
    p_path text, p_state varchar, p_now timestamptz, p_expires timestamptz,
    p_lock bigint
)
RETURNS TABLE (
    outcome text, record_id bigint, stored_fingerprint varchar,
    stored_state varchar, stored_status smallint, stored_headers text,
    stored_body bytea
)
LANGUAGE plpgsql VOLATILE
AS $body$
DECLARE
    v_digest varchar := {DIGEST};
BEGIN
    RETURN QUERY
        SELECT 'existing'::text, NULL::bigint, r.fingerprint, r.state,
               r.response_status, r.response_headers, r.response_body
        FROM django_idempotency_idempotencyrecord AS r
        WHERE r.digest = v_digest AND r.expires_at > p_now;
    IF FOUND THEN
        RETURN;
    END IF;

    IF NOT pg_try_advisory_xact_lock(p_lock) THEN
        RETURN QUERY SELECT 'locked'::text, NULL::bigint, NULL::varchar,
                            NULL::varchar, NULL::smallint, NULL::text, NULL::bytea;
        RETURN;
    END IF;

    RETURN QUERY
        INSERT INTO django_idempotency_idempotencyrecord AS r
            (scope, key, digest, fingerprint, method, path, state, response_headers,
             created_at, expires_at)
        VALUES (p_scope, p_key, v_digest, p_fingerprint, p_method, p_path, p_state, '[]',
                p_now, p_expires)
        ON CONFLICT (digest) DO UPDATE SET
            fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method,
            path = EXCLUDED.path, state = EXCLUDED.state, response_status = NULL,
            response_headers = EXCLUDED.response_headers, response_body = NULL,
            created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
        WHERE r.expires_at <= EXCLUDED.created_at
        RETURNING 'claimed'::text, r.id, NULL::varchar, NULL::varchar,
                  NULL::smallint, NULL::text, NULL::bytea;
    IF FOUND THEN
        RETURN;
    END IF;

    RETURN QUERY
        SELECT 'existing'::text, NULL::bigint, r.fingerprint, r.state,
               r.response_status, r.response_headers, r.response_body
        FROM django_idempotency_idempotencyrecord AS r
        WHERE r.digest = v_digest AND r.expires_at > p_now;
END
$body$;
"""

CREATE_V2 = f"""
CREATE OR REPLACE FUNCTION {FUNCTION_V2}(
    p_scope varchar, p_key varchar, p_fingerprint varchar, p_method varchar,
    p_path text, p_state varchar, p_now timestamptz, p_expires timestamptz,
    p_lock bigint
)
RETURNS TABLE (
    outcome text, record_id bigint, stored_fingerprint varchar,
    stored_state varchar, stored_status smallint, stored_headers text,
    stored_body bytea
)
LANGUAGE plpgsql VOLATILE
AS $body$
DECLARE
    v_live boolean;
    v_digest varchar := {DIGEST};
BEGIN
    RETURN QUERY
        SELECT 'existing'::text, NULL::bigint, r.fingerprint, r.state,
               r.response_status, r.response_headers, r.response_body
        FROM django_idempotency_idempotencyrecord AS r
        WHERE r.digest = v_digest AND r.expires_at > p_now;
    IF FOUND THEN
        RETURN;
    END IF;

    IF NOT pg_try_advisory_xact_lock(p_lock) THEN
        RETURN QUERY SELECT 'locked'::text, NULL::bigint, NULL::varchar,
                            NULL::varchar, NULL::smallint, NULL::text, NULL::bytea;
        RETURN;
    END IF;

    IF current_setting('transaction_isolation') = 'read committed' THEN
        -- A new statement, so a new snapshot: sees what the lock's previous
        -- holder committed. Expired records too, to tell finish how to write.
        SELECT r.fingerprint, r.state, r.response_status, r.response_headers,
               r.response_body, r.expires_at > p_now
        INTO stored_fingerprint, stored_state, stored_status, stored_headers,
             stored_body, v_live
        FROM django_idempotency_idempotencyrecord AS r
        WHERE r.digest = v_digest;
        IF NOT FOUND THEN
            outcome := 'claimed';  -- finish inserts
        ELSIF v_live THEN
            outcome := 'existing';
        ELSE
            outcome := 'expired';  -- claimed; finish takes the expired record over
            stored_fingerprint := NULL; stored_state := NULL; stored_status := NULL;
            stored_headers := NULL; stored_body := NULL;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;

    -- REPEATABLE READ or SERIALIZABLE: write first, as version 1 does.
    RETURN QUERY
        INSERT INTO django_idempotency_idempotencyrecord AS r
            (scope, key, digest, fingerprint, method, path, state, response_headers,
             created_at, expires_at)
        VALUES (p_scope, p_key, v_digest, p_fingerprint, p_method, p_path, p_state, '[]',
                p_now, p_expires)
        ON CONFLICT (digest) DO UPDATE SET
            fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method,
            path = EXCLUDED.path, state = EXCLUDED.state, response_status = NULL,
            response_headers = EXCLUDED.response_headers, response_body = NULL,
            created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
        WHERE r.expires_at <= EXCLUDED.created_at
        RETURNING 'claimed'::text, r.id, NULL::varchar, NULL::varchar,
                  NULL::smallint, NULL::text, NULL::bytea;
    IF FOUND THEN
        RETURN;
    END IF;

    RETURN QUERY
        SELECT 'existing'::text, NULL::bigint, r.fingerprint, r.state,
               r.response_status, r.response_headers, r.response_body
        FROM django_idempotency_idempotencyrecord AS r
        WHERE r.digest = v_digest AND r.expires_at > p_now;
END
$body$;
"""


def fill_digests(apps: Any, schema_editor: Any) -> None:
    records = apps.get_model("django_idempotency", "IdempotencyRecord")
    manager = records.objects.using(schema_editor.connection.alias)
    last = 0
    while True:
        batch = list(
            manager.filter(pk__gt=last, digest__isnull=True).order_by("pk").only("scope", "key")[
                :BATCH
            ]
        )
        if not batch:
            return
        for record in batch:
            # Fixed here, not imported: a migration keeps what it did.
            text = f"{record.scope}\x00{record.key}".encode()
            record.digest = hashlib.sha256(text).hexdigest()
        manager.bulk_update(batch, ["digest"])
        last = batch[-1].pk


class RunSQLOnPostgreSQL(migrations.RunSQL):
    """RunSQL that only PostgreSQL databases run (and ``sqlmigrate`` shows)."""

    def database_forwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, *args)

    def database_backwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, *args)


def _previous(migration: str) -> str:
    create: str = import_module(f"django_idempotency.migrations.{migration}").CREATE
    return create


class Migration(migrations.Migration):
    dependencies = [
        ("django_idempotency", "0006_postgresql_body_lz4"),
    ]

    operations = [
        migrations.AddField(
            model_name="idempotencyrecord",
            name="digest",
            field=models.CharField(max_length=64, null=True, verbose_name="digest"),
        ),
        migrations.RunPython(fill_digests, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="idempotencyrecord",
            name="digest",
            field=models.CharField(
                help_text="SHA-256 of the scope and the key, which finds the record byte for byte.",
                max_length=64,
                verbose_name="digest",
            ),
        ),
        migrations.RemoveConstraint(
            model_name="idempotencyrecord",
            name="django_idempotency_scope_key_uniq",
        ),
        migrations.AddConstraint(
            model_name="idempotencyrecord",
            constraint=models.UniqueConstraint(
                fields=("digest",), name="django_idempotency_digest_uniq"
            ),
        ),
        RunSQLOnPostgreSQL(
            sql=[CREATE_V1, CREATE_V2],
            reverse_sql=[
                _previous("0003_postgresql_claim_function"),
                _previous("0005_postgresql_claim_without_write"),
            ],
        ),
    ]
