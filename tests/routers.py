"""Database routers for the routing, admin and replica tests."""

from __future__ import annotations

from typing import Any

# Apps whose reads a replica may serve in these tests. Sessions and users stay
# on the primary, so that a login is seen at once however far the replica lags.
REPLICATED_APPS = frozenset({"django_idempotency", "testapp"})


class StandbyIsReadOnly:
    """The default router of the tests: nothing is ever migrated on "standby",
    a read-only copy of "default" (so Django 6's model checks, which ask each
    database that a model may be migrated to, leave it alone)."""

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return False if db == "standby" else None


class PrimaryStandbyRouter:
    """Writes to "default"; reads of the replicated apps from "standby"."""

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return "standby" if model._meta.app_label in REPLICATED_APPS else "default"

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == "default"


class LaggingReplicaRouter(PrimaryStandbyRouter):
    """Reads of the replicated apps from "second": a replica that lags, standing
    still where the test left it."""

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return "second" if model._meta.app_label in REPLICATED_APPS else "default"


class RecordsElsewhereRouter:
    """The idempotency records live in "second"; everything else in "default"."""

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return "second" if model._meta.app_label == "django_idempotency" else None

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label == "django_idempotency":
            return db == "second"
        return None


class RecordsNowhereRouter(RecordsElsewhereRouter):
    """Sends the records to "second" but never migrates them there."""

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return False if app_label == "django_idempotency" else None
