"""The ``IDEMPOTENCY_*`` settings and their defaults, read in one place.

A value is kept from its first use until Django's ``setting_changed`` signal
says it changed (``override_settings``), since every request reads several and
an unset one costs a raised and caught AttributeError each time. The system
checks (:mod:`django_idempotency.checks`) validate them at start-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any, Generic, TypeVar

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.db import router
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .keys import header_meta_name

# Field and header names whose values the admin never shows (admin.is_masked).
DEFAULT_ADMIN_MASKED_FIELDS = (
    *("secret", "token", "password", "passwd", "key", "authorization", "cookie"),
    *("credentials", "signature", "otp", "pin", "cvv", "cvc", "ssn"),
)
# The Redis lease is renewed every third of it: under MIN_LEASE renewals cannot
# keep up (an error); under SHORT_LEASE a loaded server may miss one (a warning).
MIN_LEASE = timedelta(milliseconds=100)
SHORT_LEASE = timedelta(seconds=1)
# The longest TTL: a key lives a day or so, and an expiry past the year 9999
# would overflow datetime in every request.
MAX_TTL = timedelta(days=3650)

T = TypeVar("T")

DEFAULTS: dict[str, Any] = {
    "IDEMPOTENCY_HEADER": "Idempotency-Key",
    "IDEMPOTENCY_TTL": timedelta(hours=24),
    "IDEMPOTENCY_STORE": "django_idempotency.stores.database.DatabaseStore",
    "IDEMPOTENCY_DATABASE": None,  # None: where the routers send the records' writes
    "IDEMPOTENCY_CACHE": "default",
    "IDEMPOTENCY_SCOPE": "django_idempotency.keys.user_scope",
    # Rejections the client fixes and retries with the same key; every 5xx too.
    "IDEMPOTENCY_RELEASED_STATUSES": frozenset({400, 401, 403, 422, 429}),
    "IDEMPOTENCY_RETRY_AFTER": 1,
    "IDEMPOTENCY_SHOULD_RETRY_HEADERS": ("X-Should-Retry",),
    "IDEMPOTENCY_ADMIN_MASKED_FIELDS": DEFAULT_ADMIN_MASKED_FIELDS,
    "IDEMPOTENCY_LEASE": timedelta(seconds=30),
    "IDEMPOTENCY_FAIL_OPEN": False,
    "IDEMPOTENCY_ALLOW_UNTESTED_DATABASE": False,
    "IDEMPOTENCY_REDIS_MIN_REPLICAS": 0,
    "IDEMPOTENCY_REDIS_WAIT_TIMEOUT": timedelta(seconds=1),
    "IDEMPOTENCY_REDIS_TIMEOUT_BUDGET": timedelta(seconds=3),
    # Fernet keys that seal stored responses (encryption.py); None keeps them plain.
    "IDEMPOTENCY_ENCRYPTION_KEYS": None,
}


def ttl_problem(value: Any, *, numbers: bool = True) -> tuple[str, str] | None:
    """Why ``value`` cannot be a TTL: ``("type", message)`` or ``("range",
    message)``; None if it can. ``numbers=False`` accepts a timedelta only, as
    ``@idempotent(ttl=...)`` does."""
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


def _seconds(value: Any) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _Setting(Generic[T]):
    """A setting read as configured: the system checks vouch for its type."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, settings: Settings, owner: type | None = None) -> T:
        value: T = settings.raw(self.name)
        return value


class Settings:
    """Typed access to the ``IDEMPOTENCY_*`` settings."""

    IDEMPOTENCY_HEADER = _Setting[str]()
    IDEMPOTENCY_STORE = _Setting[str]()
    IDEMPOTENCY_CACHE = _Setting[str]()
    IDEMPOTENCY_SCOPE = _Setting[str | Callable[..., Any]]()
    IDEMPOTENCY_RELEASED_STATUSES = _Setting[Collection[int]]()
    IDEMPOTENCY_RETRY_AFTER = _Setting[int]()
    IDEMPOTENCY_SHOULD_RETRY_HEADERS = _Setting[Collection[str]]()
    IDEMPOTENCY_ADMIN_MASKED_FIELDS = _Setting[Collection[str]]()

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._derived: dict[str, Any] = {}  # computed from the values, kept with them
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

    def _derive(self, name: str, compute: Callable[[], T]) -> T:
        if name not in self._derived:
            self._derived[name] = compute()
        value: T = self._derived[name]
        return value

    @property
    def header_meta_name(self) -> str:
        """``IDEMPOTENCY_HEADER`` as a WSGI environ name (``HTTP_IDEMPOTENCY_KEY``)."""
        return self._derive("meta", lambda: header_meta_name(self.IDEMPOTENCY_HEADER))

    @property
    def IDEMPOTENCY_TTL(self) -> timedelta:
        return self._derive("ttl", lambda: timedelta(seconds=self.ttl_seconds))

    @property
    def ttl_seconds(self) -> float:
        return _seconds(self.raw("IDEMPOTENCY_TTL"))

    @property
    def IDEMPOTENCY_DATABASE(self) -> str:
        """The database store's alias: the setting if given, else the routers' choice."""
        return store_database()

    @property
    def lease_seconds(self) -> float:
        """``IDEMPOTENCY_LEASE``: how long a Redis claim lives unless renewed."""
        return _seconds(self.raw("IDEMPOTENCY_LEASE"))

    @property
    def IDEMPOTENCY_FAIL_OPEN(self) -> bool:
        # Only a real True opens: "false" from an environment variable must
        # not remove the fails-closed guarantee (the checks report it, E020).
        return self.raw("IDEMPOTENCY_FAIL_OPEN") is True

    @property
    def scope_function(self) -> Callable[..., Any]:
        scope = self.IDEMPOTENCY_SCOPE
        if callable(scope):
            return scope
        function: Callable[..., Any] = self._derive("scope", lambda: import_string(scope))
        return function


conf = Settings()


def store_database() -> str:
    """The records' database alias: ``IDEMPOTENCY_DATABASE`` if set, else
    ``router.db_for_write(IdempotencyRecord)`` as for any app's model."""
    alias = conf.raw("IDEMPOTENCY_DATABASE")
    if alias is not None:
        return str(alias)
    from .models import IdempotencyRecord  # not at import: it needs the app registry

    # Asked on every request: a router may answer by tenant or by thread.
    return router.db_for_write(IdempotencyRecord)


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in DEFAULTS:
        conf.reload()
