"""System checks for the IDEMPOTENCY_* settings (see docs/reference.rst, "System checks").

Each check reads the setting as configured (``conf.raw``), so that a bad value
is reported at start-up with a hint instead of failing in the first request.
Ids are stable. E010, E012 and E013 are the Redis store's (``_check_cache_store``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from .conf import conf

Messages = list[checks.CheckMessage]

# RFC 9110 section 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@checks.register
def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> Messages:
    """Every check of this app; Django runs it with ``manage.py check`` and at start-up."""
    return [
        *_check_store(),
        *_check_ttl(),
        *_check_scope(),
        *_check_released_statuses(),
        *_check_header(),
        *_check_retry_after(),
        *_check_database(),
        *_check_admin_masked_fields(),
        *_check_cache_store(),
    ]


def _error(id_: int, msg: str, hint: str) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"django_idempotency.E{id_:03d}")


def _warning(id_: int, msg: str, hint: str) -> checks.Warning:
    return checks.Warning(msg, hint=hint, id=f"django_idempotency.W{id_:03d}")


def _import_store() -> tuple[Any, Exception | None]:
    """The class that IDEMPOTENCY_STORE names, or why it cannot be imported."""
    try:
        return import_string(conf.raw("IDEMPOTENCY_STORE")), None
    except (ImportError, TypeError, ValueError) as exc:
        return None, exc


def _check_store() -> Messages:
    from .stores.base import Store

    path = conf.raw("IDEMPOTENCY_STORE")
    store_class, exc = _import_store()
    if exc is not None:
        return [
            _error(
                1,
                f"IDEMPOTENCY_STORE {path!r} cannot be imported: {exc}",
                "Use 'django_idempotency.stores.database.DatabaseStore' or the dotted path "
                "of a Store subclass.",
            )
        ]
    if not (isinstance(store_class, type) and issubclass(store_class, Store)):
        return [
            _error(
                2,
                f"IDEMPOTENCY_STORE {path!r} is not a Store subclass.",
                "Subclass django_idempotency.stores.base.Store.",
            )
        ]
    return []


def _check_ttl() -> Messages:
    ttl = conf.raw("IDEMPOTENCY_TTL")
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        seconds = math.nan
    if not math.isfinite(seconds):
        return [
            _error(
                3,
                f"IDEMPOTENCY_TTL must be a timedelta or a number of seconds, not {ttl!r}.",
                "For example: IDEMPOTENCY_TTL = timedelta(hours=24).",
            )
        ]
    if seconds <= 0:
        return [
            _error(
                4,
                f"IDEMPOTENCY_TTL must be positive, not {ttl!r}.",
                "A key is remembered for this long; 24 hours is the usual choice.",
            )
        ]
    return []


def _check_scope() -> Messages:
    scope = conf.raw("IDEMPOTENCY_SCOPE")
    if isinstance(scope, str):
        try:
            scope = import_string(scope)
        except ImportError as exc:
            return [
                _error(
                    5,
                    f"IDEMPOTENCY_SCOPE {conf.raw('IDEMPOTENCY_SCOPE')!r} cannot be imported: "
                    f"{exc}",
                    "Give the dotted path of a function that takes the request and returns "
                    "a string, or None to refuse the request.",
                )
            ]
    if not callable(scope):
        return [
            _error(
                6,
                f"IDEMPOTENCY_SCOPE must be a callable or the dotted path of one, not {scope!r}.",
                "Give a function that takes the request and returns a string, or None to "
                "refuse the request.",
            )
        ]
    return []


def _check_released_statuses() -> Messages:
    statuses = conf.raw("IDEMPOTENCY_RELEASED_STATUSES")
    hint = "For example: IDEMPOTENCY_RELEASED_STATUSES = {400, 401, 403, 422, 429}."
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Collection):
        return [
            _error(
                7,
                f"IDEMPOTENCY_RELEASED_STATUSES must be a collection of HTTP status codes, "
                f"not {statuses!r}.",
                hint,
            )
        ]
    bad = [
        status
        for status in statuses
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ]
    if bad:
        return [
            _error(
                7,
                f"IDEMPOTENCY_RELEASED_STATUSES has values that are not HTTP status codes "
                f"(integers from 100 to 599): {bad!r}.",
                hint,
            )
        ]
    successes = sorted(status for status in statuses if 200 <= status <= 299)
    if successes:
        return [
            _warning(
                1,
                f"IDEMPOTENCY_RELEASED_STATUSES includes successful statuses {successes}: "
                "a retry of a request that succeeded runs the operation again.",
                "Release only statuses that the client is expected to fix and retry, "
                "such as 400, 401, 403, 422 and 429.",
            )
        ]
    return []


def _check_header() -> Messages:
    header = conf.raw("IDEMPOTENCY_HEADER")
    if not isinstance(header, str) or not _TOKEN.fullmatch(header):
        return [
            _error(
                8,
                f"IDEMPOTENCY_HEADER must be an HTTP header name (a token of letters, digits "
                f"and !#$%&'*+-.^_`|~), not {header!r}.",
                "Leave it unset for 'Idempotency-Key', the name the IETF draft specifies.",
            )
        ]
    if "_" in header:
        return [
            _warning(
                2,
                f"IDEMPOTENCY_HEADER {header!r} has an underscore: Django's runserver, nginx "
                "and other servers drop such headers, and WSGI cannot tell '_' from '-'.",
                "Use '-' instead of '_'.",
            )
        ]
    return []


def _check_retry_after() -> Messages:
    retry_after = conf.raw("IDEMPOTENCY_RETRY_AFTER")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        return [
            _error(
                9,
                f"IDEMPOTENCY_RETRY_AFTER must be a whole number of seconds, 0 or more, "
                f"not {retry_after!r}.",
                "It is sent as the Retry-After header of 409 idempotency_key_in_use; "
                "the default is 1.",
            )
        ]
    return []


def _check_database() -> Messages:
    from .stores.database import DatabaseStore

    store_class, _ = _import_store()
    if not (isinstance(store_class, type) and issubclass(store_class, DatabaseStore)):
        return []
    alias = conf.raw("IDEMPOTENCY_DATABASE")
    if not isinstance(alias, str) or alias not in settings.DATABASES:
        return [
            _error(
                11,
                f"IDEMPOTENCY_DATABASE {alias!r} is not a database alias in DATABASES.",
                f"Use one of {sorted(settings.DATABASES)}; the database store keeps its "
                "records there, in the same transaction as the view's writes.",
            )
        ]
    return []


def _check_admin_masked_fields() -> Messages:
    fields = conf.raw("IDEMPOTENCY_ADMIN_MASKED_FIELDS")
    if (
        isinstance(fields, str | bytes)
        or not isinstance(fields, Collection)
        or not all(isinstance(field, str) and field for field in fields)
    ):
        return [
            _error(
                14,
                "IDEMPOTENCY_ADMIN_MASKED_FIELDS must be a collection of field names, "
                f"not {fields!r}.",
                'For example ("secret", "token", "password", "key"); a single string '
                "would be read as its letters. Extend "
                "django_idempotency.conf.DEFAULT_ADMIN_MASKED_FIELDS to keep the defaults.",
            )
        ]
    return []
def _check_cache_store() -> Messages:
    """The Redis store needs a django-redis cache that every process shares."""
    store_class, _ = _import_store()
    if not isinstance(store_class, type):
        return []
    try:
        from .stores.cache import CacheStore
    except ImportError:  # redis is not installed: then the store's import failed (E001)
        return []
    if not issubclass(store_class, CacheStore):
        return []
    messages: Messages = []
    alias = conf.raw("IDEMPOTENCY_CACHE")
    caches = getattr(settings, "CACHES", {})
    if not isinstance(alias, str) or alias not in caches:
        messages.append(
            _error(
                10,
                f"IDEMPOTENCY_CACHE {alias!r} is not a cache alias in CACHES.",
                "Add a django_redis.cache.RedisCache entry to CACHES under that alias, or "
                "set IDEMPOTENCY_CACHE to the alias of one.",
            )
        )
    else:
        backend = str(caches[alias].get("BACKEND", ""))
        client_class = str(caches[alias].get("OPTIONS", {}).get("CLIENT_CLASS", ""))
        if backend != "django_redis.cache.RedisCache" or client_class.endswith("ShardClient"):
            messages.append(
                _error(
                    12,
                    f"The cache {alias!r} ({backend}) cannot hold idempotency records: the "
                    "Redis store needs a django-redis cache that all processes share.",
                    "Use BACKEND 'django_redis.cache.RedisCache' (not ShardClient). LocMem "
                    "and Dummy caches are not shared between processes, so a retry that "
                    "reaches another worker would run the view again.",
                )
            )
    lease = conf.raw("IDEMPOTENCY_LEASE")
    if isinstance(lease, timedelta):
        lease = lease.total_seconds()
    if (
        isinstance(lease, bool)
        or not isinstance(lease, (int, float))
        or not math.isfinite(lease)
        or lease <= 0
    ):
        messages.append(
            _error(
                13,
                f"IDEMPOTENCY_LEASE {conf.raw('IDEMPOTENCY_LEASE')!r} is not a positive "
                "duration.",
                "Use seconds (e.g. 30) or a datetime.timedelta; the lease is renewed while "
                "the view runs and bounds how long a dead worker's key stays in use.",
            )
        )
    return messages
