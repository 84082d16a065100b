"""The ``IDEMPOTENCY_*`` settings, their defaults, read live in one place.

Every value is read from ``django.conf.settings`` on each access, so
``override_settings`` works in tests without reload hooks. Values are checked
at start-up by the system checks in :mod:`django_idempotency.checks`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

DEFAULT_STORE = "django_idempotency.stores.database.DatabaseStore"
DEFAULT_SCOPE = "django_idempotency.keys.user_scope"
# Rejections that the client is expected to fix and then retry with the same
# key. Every 5xx is released as well, whatever this setting says.
DEFAULT_RELEASED_STATUSES = frozenset({400, 401, 403, 422, 429})
# The Redis store's claim lease. It is renewed while the view runs, so it only
# bounds how long a key stays "in use" after a worker dies.
DEFAULT_LEASE = timedelta(seconds=30)


def _as_seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


class Settings:
    """Typed, live access to the ``IDEMPOTENCY_*`` settings."""

    @property
    def IDEMPOTENCY_HEADER(self) -> str:
        return str(getattr(django_settings, "IDEMPOTENCY_HEADER", "Idempotency-Key"))

    @property
    def IDEMPOTENCY_TTL(self) -> timedelta:
        return timedelta(seconds=self.ttl_seconds)

    @property
    def ttl_seconds(self) -> float:
        return _as_seconds(getattr(django_settings, "IDEMPOTENCY_TTL", timedelta(hours=24)))

    @property
    def IDEMPOTENCY_STORE(self) -> str:
        return str(getattr(django_settings, "IDEMPOTENCY_STORE", DEFAULT_STORE))

    @property
    def IDEMPOTENCY_DATABASE(self) -> str:
        return str(getattr(django_settings, "IDEMPOTENCY_DATABASE", "default"))

    @property
    def IDEMPOTENCY_CACHE(self) -> str:
        return str(getattr(django_settings, "IDEMPOTENCY_CACHE", "default"))

    @property
    def lease_seconds(self) -> float:
        """``IDEMPOTENCY_LEASE``: how long a Redis claim lives unless renewed."""
        return _as_seconds(getattr(django_settings, "IDEMPOTENCY_LEASE", DEFAULT_LEASE))

    @property
    def IDEMPOTENCY_FAIL_OPEN(self) -> bool:
        return bool(getattr(django_settings, "IDEMPOTENCY_FAIL_OPEN", False))

    @property
    def IDEMPOTENCY_SCOPE(self) -> str | Callable[..., Any]:
        value: str | Callable[..., Any] = getattr(
            django_settings, "IDEMPOTENCY_SCOPE", DEFAULT_SCOPE
        )
        return value

    @property
    def scope_function(self) -> Callable[..., Any]:
        value = self.IDEMPOTENCY_SCOPE
        if callable(value):
            return value
        return _import_cached(value)

    @property
    def IDEMPOTENCY_RELEASED_STATUSES(self) -> Collection[int]:
        value: Collection[int] = getattr(
            django_settings, "IDEMPOTENCY_RELEASED_STATUSES", DEFAULT_RELEASED_STATUSES
        )
        return value

    @property
    def IDEMPOTENCY_RETRY_AFTER(self) -> int:
        return int(getattr(django_settings, "IDEMPOTENCY_RETRY_AFTER", 1))


_imports: dict[str, Any] = {}


def _import_cached(path: str) -> Any:
    try:
        return _imports[path]
    except KeyError:
        _imports[path] = value = import_string(path)
        return value


conf = Settings()
