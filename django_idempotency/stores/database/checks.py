"""The database store's system checks (ids listed in docs/settings.rst).

``DatabaseStore.check()`` returns :func:`check_settings`. :func:`check_database`
asks the database itself, so Django runs it only for the databases it is asked
about (``check --database``, ``migrate``); it is silent when they cannot be reached.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connections, router
from django.db.migrations.recorder import MigrationRecorder
from django.utils.module_loading import import_string

from ...checks import _error, _warning
from ...conf import conf, store_database
from ...models import IdempotencyRecord
from . import sql

Messages = list[checks.CheckMessage]

#: Database vendors (Django's ``connection.vendor``) whose claim path the test
#: suite proves against real servers.
PROVEN_VENDORS = frozenset({"postgresql", "sqlite", "mysql"})
# The oldest servers that have every statement the store sends: SELECT ...
# FOR UPDATE SKIP LOCKED (the purge) came in MariaDB 10.6 and MySQL 8.0.1.
MARIADB_MINIMUM = (10, 6)
MYSQL_MINIMUM = (8, 0, 1)
_TABLE = IdempotencyRecord._meta.db_table


def _valid_alias() -> bool:
    alias = conf.raw("IDEMPOTENCY_DATABASE")  # None: the routers decide
    return alias is None or (isinstance(alias, str) and alias in settings.DATABASES)


def check_settings() -> Messages:
    if not _valid_alias():
        alias = conf.raw("IDEMPOTENCY_DATABASE")
        return [
            _error(
                11,
                f"IDEMPOTENCY_DATABASE {alias!r} is not a database alias in DATABASES.",
                f"Use one of {sorted(settings.DATABASES)}, or leave it unset to follow "
                "DATABASE_ROUTERS; the database store keeps its records there, in the same "
                "transaction as the view's writes.",
            )
        ]
    return [*_check_vendor(store_database()), *_check_routing(store_database())]


def _check_vendor(alias: str) -> Messages:
    allow = conf.raw("IDEMPOTENCY_ALLOW_UNTESTED_DATABASE")
    if not isinstance(allow, bool):
        return [
            _error(
                21,
                f"IDEMPOTENCY_ALLOW_UNTESTED_DATABASE must be True or False, not {allow!r}.",
                "A string such as 'false' (read from an environment variable) is not a "
                "boolean; convert it, e.g. os.environ.get(...) == 'true'.",
            )
        ]
    if alias not in settings.DATABASES or allow:
        return []
    connection = connections[alias]
    if connection.vendor in PROVEN_VENDORS:
        return []
    return [
        _error(
            33,
            f"The database store keeps its records in {alias!r}, on {connection.display_name} "
            f"(vendor {connection.vendor!r}). django-idempotency proves its claim "
            "(one run per key under concurrent duplicates, what a duplicate gets, the view's "
            "writes committed with the response, crashes) on PostgreSQL, MariaDB/MySQL and "
            f"SQLite only. On {connection.display_name} the store would use its portable path "
            "(read, then insert under the unique constraint), which no test proves there.",
            "Keep the records on PostgreSQL, MariaDB/MySQL or SQLite (IDEMPOTENCY_DATABASE "
            "or your DATABASE_ROUTERS), use the Redis store, or set "
            "IDEMPOTENCY_ALLOW_UNTESTED_DATABASE = True to accept the untested path knowingly "
            "(see the Databases page of the docs).",
        )
    ]


def _check_routing(alias: str) -> Messages:
    """Where the routers and IDEMPOTENCY_DATABASE disagree, or where migrate
    would never create the table. Asks the routers, not the database."""
    routed = router.db_for_write(IdempotencyRecord)
    messages: Messages = []
    if alias != routed:
        messages.append(
            _warning(
                30,
                f"IDEMPOTENCY_DATABASE is {alias!r}, but DATABASE_ROUTERS send the writes of "
                f"django_idempotency's records to {routed!r}: the store writes to {alias!r}, "
                "the admin and the ORM look for the records in the routers' database.",
                "Leave IDEMPOTENCY_DATABASE unset to follow the routers, or route the "
                f"django_idempotency app to {alias!r}.",
            )
        )
    if alias in settings.DATABASES and not router.allow_migrate_model(alias, IdempotencyRecord):
        messages.append(
            _warning(
                31,
                f"The database store keeps its records in {alias!r}, but DATABASE_ROUTERS do "
                "not allow django_idempotency's migrations there: `migrate` never creates "
                "the table, and every guarded request would answer 500 "
                "idempotency_misconfigured.",
                f"Let your router's allow_migrate() return True for app 'django_idempotency' "
                f"on {alias!r}, or point IDEMPOTENCY_DATABASE at the database that has it.",
            )
        )
    return messages


def _asked_alias(databases: Collection[str] | None) -> str | None:
    """The store's database, if the database store is configured and Django
    asks about that database."""
    from .store import DatabaseStore

    if not databases:
        return None
    try:
        store_class = import_string(conf.raw("IDEMPOTENCY_STORE"))
    except (ImportError, TypeError, ValueError):
        return None
    if not (isinstance(store_class, type) and issubclass(store_class, DatabaseStore)):
        return None
    if not _valid_alias():
        return None
    alias = store_database()
    return alias if alias in databases and alias in settings.DATABASES else None


@checks.register(checks.Tags.database)
def check_database(
    app_configs: Sequence[Any] | None = None,
    databases: Collection[str] | None = None,
    **kwargs: Any,
) -> Messages:
    """The store's database: its server version, its table and, on
    PostgreSQL, its claim function. Silent before ``migrate`` has created them:
    Django runs this at the start of that very ``migrate``, and elsewhere
    (``runserver``) says itself that migrations are unapplied."""
    alias = _asked_alias(databases)
    if alias is None:
        return []
    connection = connections[alias]
    try:
        if connection.vendor == "mysql" and (version := _check_mysql_version(alias)):
            return version
        if _TABLE not in connection.introspection.table_names():
            applied = MigrationRecorder(connection).applied_migrations()
            if ("django_idempotency", "0001_initial") not in applied:
                return []
            return [
                _warning(
                    32,
                    f"The database {alias!r} has no table {_TABLE!r}, although its migrations "
                    "are recorded as applied: every guarded request would answer 500 "
                    "idempotency_misconfigured.",
                    f"Run `manage.py migrate django_idempotency zero --fake --database "
                    f"{alias}`, then `manage.py migrate django_idempotency --database {alias}`.",
                )
            ]
        if connection.vendor == "postgresql":
            return _check_claim_function(alias)
    except DatabaseError:
        return []
    return []


def _check_mysql_version(alias: str) -> Messages:
    connection: Any = connections[alias]
    mariadb: bool = connection.mysql_is_mariadb
    version: tuple[int, ...] = connection.mysql_version
    name, minimum = ("MariaDB", MARIADB_MINIMUM) if mariadb else ("MySQL", MYSQL_MINIMUM)
    if version >= minimum:
        return []
    found, needed = (".".join(map(str, v)) for v in (version, minimum))
    return [
        _error(
            50,
            f"The database {alias!r} is {name} {found}; the database store needs {name} "
            f"{needed} or newer.",
            f"Upgrade the server to {name} {needed} or newer, or keep the records in another "
            "database (IDEMPOTENCY_DATABASE) or in Redis (IDEMPOTENCY_STORE).",
        )
    ]


def _check_claim_function(alias: str) -> Messages:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [sql.CLAIM_SIGNATURE])
        (found,) = cursor.fetchone()
    if found:
        return []
    applied = MigrationRecorder(connection).applied_migrations()
    if ("django_idempotency", "0001_initial") not in applied:
        # The table was made without migrations (a test database built with
        # --nomigrations, say).
        fix = (
            "`manage.py migrate django_idempotency --fake-initial --skip-checks "
            f"--database {alias}`"
        )
    elif ("django_idempotency", "0002_postgresql_claim_function") in applied:
        fix = (
            f"`manage.py migrate django_idempotency 0001 --skip-checks --database {alias}`, "
            f"then `manage.py migrate django_idempotency --database {alias}`"
        )
    else:
        return []  # migrate creates it; runserver reports the unapplied migration
    return [
        _error(
            34,
            f"The database {alias!r} has no function {sql.CLAIM_SIGNATURE}, with which the "
            "database store claims keys on PostgreSQL: every guarded request would answer 500 "
            "idempotency_misconfigured.",
            f"Run {fix}.",
        )
    ]
