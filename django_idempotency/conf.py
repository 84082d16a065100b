"""The ``IDEMPOTENCY_*`` settings, their defaults, read in one place.

A value is read from ``django.conf.settings`` on first use and then kept, until
Django's ``setting_changed`` signal says an ``IDEMPOTENCY_*`` setting changed
(``override_settings``, pytest-django's ``settings`` fixture). Reading an unset
setting through ``django.conf.settings`` raises and catches an AttributeError
each time, and a request reads about ten of them. Values are checked at
start-up by the system checks in :mod:`django_idempotency.checks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .keys import header_meta_name

DEFAULT_STORE = "django_idempotency.stores.database.DatabaseStore"
DEFAULT_SCOPE = "django_idempotency.keys.user_scope"
# Rejections that the client is expected to fix and then retry with the same
# key. Every 5xx is released as well, whatever this setting says.
DEFAULT_RELEASED_STATUSES = frozenset({400, 401, 403, 422, 429})
# Field names (and header names) whose values the admin never shows. A name
# matches when it equals one of these or ends with "_" plus one, after
# lower-casing and turning "-" and camelCase into "_" (see admin.is_masked).
DEFAULT_ADMIN_MASKED_FIELDS = (
    "secret",
    "token",
    "password",
    "passwd",
    "key",
    "authorization",
    "cookie",
    "credentials",
    "signature",
    "otp",
    "pin",
    "cvv",
    "cvc",
    "ssn",
)
# The Redis store's claim lease. It is renewed while the view runs, so it only
# bounds how long a key stays "in use" after a worker dies.
DEFAULT_LEASE = timedelta(seconds=30)
# A lease is renewed every third of it. Under MIN_LEASE that cannot keep up
# with a Redis round trip and the renewer's wake-ups (an error); under
# SHORT_LEASE a loaded server may miss a renewal (a warning: tests of the
# lease itself use such leases to see it lapse quickly).
MIN_LEASE = timedelta(milliseconds=100)
SHORT_LEASE = timedelta(seconds=1)
# The longest TTL accepted, for IDEMPOTENCY_TTL and @idempotent(ttl=...). A key
# is kept for a day or so; years are a mistake, and an expiry past the year
# 9999 would overflow datetime in every request.
MAX_TTL = timedelta(days=3650)


# Every setting and its default. The system checks validate what
# :meth:`Settings.raw` returns; the properties below convert it for use.
DEFAULTS: dict[str, Any] = {
    "IDEMPOTENCY_HEADER": "Idempotency-Key",
    "IDEMPOTENCY_TTL": timedelta(hours=24),
    "IDEMPOTENCY_STORE": DEFAULT_STORE,
    # None: where Django's routers send the record model's writes (store_database).
    "IDEMPOTENCY_DATABASE": None,
    "IDEMPOTENCY_CACHE": "default",
    "IDEMPOTENCY_SCOPE": DEFAULT_SCOPE,
    "IDEMPOTENCY_RELEASED_STATUSES": DEFAULT_RELEASED_STATUSES,
    "IDEMPOTENCY_RETRY_AFTER": 1,
    # The retry-hint headers on every error: x-should-retry is read by
    # Stainless-generated SDKs; add "Stripe-Should-Retry" for Stripe's.
    "IDEMPOTENCY_SHOULD_RETRY_HEADERS": ("X-Should-Retry",),
    "IDEMPOTENCY_ADMIN_MASKED_FIELDS": DEFAULT_ADMIN_MASKED_FIELDS,
    "IDEMPOTENCY_LEASE": DEFAULT_LEASE,
    "IDEMPOTENCY_FAIL_OPEN": False,
    # The database store on a vendor its tests do not cover (stores/database.py).
    "IDEMPOTENCY_ALLOW_UNTESTED_DATABASE": False,
    # The Redis store's optional replication guarantee (stores/redis.py).
    "IDEMPOTENCY_REDIS_MIN_REPLICAS": 0,
    "IDEMPOTENCY_REDIS_WAIT_TIMEOUT": timedelta(seconds=1),
    # The most time one request waits for Redis, redis-py's own retries included.
    "IDEMPOTENCY_REDIS_TIMEOUT_BUDGET": timedelta(seconds=3),
    # Fernet keys that seal stored responses (encryption.py); None keeps them plain.
    "IDEMPOTENCY_ENCRYPTION_KEYS": None,
}


def ttl_problem(value: Any, *, numbers: bool = True) -> tuple[str, str] | None:
    """Why ``value`` cannot be a TTL, or None if it can.

    The answer is ``("type", message)`` for something that is not a duration
    at all and ``("range", message)`` for one out of range. The system checks
    (``IDEMPOTENCY_TTL``, which may also be a number of seconds) and
    ``@idempotent(ttl=...)`` (a timedelta only) share this.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif numbers and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    else:
        kinds = "a timedelta or a number of seconds" if numbers else "a datetime.timedelta"
        return "type", f"must be {kinds}, not {value!r}"
    if math.isnan(seconds) or (math.isinf(seconds) and not isinstance(value, int)):
        return "type", f"must be a finite duration, not {value!r}"
    if seconds <= 0:
        return "range", f"must be positive, not {value!r}"
    if seconds > MAX_TTL.total_seconds():
        return "range", f"must be at most {MAX_TTL.days} days, not {value!r}"
    return None


def _as_seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


class Settings:
    """Typed access to the ``IDEMPOTENCY_*`` settings."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        # Values computed from settings on every request (a timedelta, a META
        # name), computed once and kept as the settings are.
        self._derived: dict[str, Any] = {}
        #: For checks.ensure_checked(): False until the checks ran for the values
        #: now configured, then True, or the message of the errors they found.
        self.checked: bool | str = False

    def raw(self, name: str) -> Any:
        """The setting ``name`` as configured, or its default, unconverted."""
        try:
            return self._values[name]
        except KeyError:
            value = self._values[name] = getattr(django_settings, name, DEFAULTS[name])
            return value

    def reload(self) -> None:
        """Forget the values read so far: the next access reads settings again."""
        self._values.clear()
        self._derived.clear()
        self.checked = False

    @property
    def IDEMPOTENCY_HEADER(self) -> str:
        return str(self.raw("IDEMPOTENCY_HEADER"))

    @property
    def header_meta_name(self) -> str:
        """``IDEMPOTENCY_HEADER`` as a WSGI environ name (``HTTP_IDEMPOTENCY_KEY``)."""
        try:
            return str(self._derived["header_meta_name"])
        except KeyError:
            value = self._derived["header_meta_name"] = header_meta_name(self.IDEMPOTENCY_HEADER)
            return value

    @property
    def IDEMPOTENCY_TTL(self) -> timedelta:
        try:
            ttl: timedelta = self._derived["ttl"]
        except KeyError:
            ttl = self._derived["ttl"] = timedelta(seconds=self.ttl_seconds)
        return ttl

    @property
    def ttl_seconds(self) -> float:
        return _as_seconds(self.raw("IDEMPOTENCY_TTL"))

    @property
    def IDEMPOTENCY_STORE(self) -> str:
        return str(self.raw("IDEMPOTENCY_STORE"))

    @property
    def IDEMPOTENCY_DATABASE(self) -> str:
        """The database store's alias: the setting if given, else the routers' choice."""
        return store_database()

    @property
    def IDEMPOTENCY_CACHE(self) -> str:
        return str(self.raw("IDEMPOTENCY_CACHE"))

    @property
    def lease_seconds(self) -> float:
        """``IDEMPOTENCY_LEASE``: how long a Redis claim lives unless renewed."""
        return _as_seconds(self.raw("IDEMPOTENCY_LEASE"))

    @property
    def IDEMPOTENCY_FAIL_OPEN(self) -> bool:
        # Only a real True opens: "false" from an environment variable must
        # not remove the fails-closed guarantee (the checks report it, E020).
        return self.raw("IDEMPOTENCY_FAIL_OPEN") is True

    @property
    def IDEMPOTENCY_SCOPE(self) -> str | Callable[..., Any]:
        value: str | Callable[..., Any] = self.raw("IDEMPOTENCY_SCOPE")
        return value

    @property
    def scope_function(self) -> Callable[..., Any]:
        value = self.IDEMPOTENCY_SCOPE
        if callable(value):
            return value
        function: Callable[..., Any] = _import_cached(value)
        return function

    @property
    def IDEMPOTENCY_RELEASED_STATUSES(self) -> Collection[int]:
        value: Collection[int] = self.raw("IDEMPOTENCY_RELEASED_STATUSES")
        return value

    @property
    def IDEMPOTENCY_RETRY_AFTER(self) -> int:
        return int(self.raw("IDEMPOTENCY_RETRY_AFTER"))

    @property
    def IDEMPOTENCY_SHOULD_RETRY_HEADERS(self) -> Collection[str]:
        value: Collection[str] = self.raw("IDEMPOTENCY_SHOULD_RETRY_HEADERS")
        return value

    @property
    def IDEMPOTENCY_ADMIN_MASKED_FIELDS(self) -> Collection[str]:
        value: Collection[str] = self.raw("IDEMPOTENCY_ADMIN_MASKED_FIELDS")
        return value


_imports: dict[str, Any] = {}


def _import_cached(path: str) -> Any:
    try:
        return _imports[path]
    except KeyError:
        _imports[path] = value = import_string(path)
        return value


conf = Settings()


def store_database() -> str:
    """The database alias of the idempotency records: ``IDEMPOTENCY_DATABASE`` if
    set, else ``router.db_for_write(IdempotencyRecord)``, as for any app's model
    (``"default"`` without routers)."""
    alias = conf.raw("IDEMPOTENCY_DATABASE")
    if alias is not None:
        return str(alias)
    from django.db import router

    from .models import IdempotencyRecord

    return router.db_for_write(IdempotencyRecord)


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in DEFAULTS:
        conf.reload()
