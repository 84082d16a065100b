"""System checks for the IDEMPOTENCY_* settings (see README, "System checks")."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.utils.module_loading import import_string

from .conf import conf


@checks.register(checks.Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    try:
        store_class = import_string(conf.IDEMPOTENCY_STORE)
    except ImportError as exc:
        errors.append(
            checks.Error(
                f"IDEMPOTENCY_STORE {conf.IDEMPOTENCY_STORE!r} cannot be imported: {exc}",
                hint="Use django_idempotency.stores.database.DatabaseStore or the dotted "
                "path of a Store subclass.",
                id="django_idempotency.E001",
            )
        )
    else:
        from .stores.base import Store

        if not (isinstance(store_class, type) and issubclass(store_class, Store)):
            errors.append(
                checks.Error(
                    f"IDEMPOTENCY_STORE {conf.IDEMPOTENCY_STORE!r} is not a Store subclass.",
                    hint="Subclass django_idempotency.stores.base.Store.",
                    id="django_idempotency.E001",
                )
            )
    return errors



@checks.register(checks.Tags.caches)
def check_cache_store(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The Redis store needs a django-redis cache that every process shares.

    Ids: E010 (alias missing), E012 (not a shared django-redis cache), E013 (lease).
    """
    try:
        from .stores.cache import CacheStore

        store_class = import_string(conf.IDEMPOTENCY_STORE)
    except ImportError:
        return []  # not installed or not importable: check_settings reports it
    if not (isinstance(store_class, type) and issubclass(store_class, CacheStore)):
        return []
    from django.conf import settings

    errors: list[checks.CheckMessage] = []
    alias = conf.IDEMPOTENCY_CACHE
    cache_settings = getattr(settings, "CACHES", {}).get(alias)
    if cache_settings is None:
        errors.append(
            checks.Error(
                f"IDEMPOTENCY_CACHE {alias!r} is not a cache in CACHES.",
                hint="Add a django_redis.cache.RedisCache entry to CACHES under that alias, "
                "or set IDEMPOTENCY_CACHE to the alias of one.",
                id="django_idempotency.E010",
            )
        )
    else:
        backend = str(cache_settings.get("BACKEND", ""))
        client_class = str(cache_settings.get("OPTIONS", {}).get("CLIENT_CLASS", ""))
        if backend != "django_redis.cache.RedisCache" or client_class.endswith("ShardClient"):
            errors.append(
                checks.Error(
                    f"The cache {alias!r} ({backend}) cannot hold idempotency records: the "
                    "Redis store needs a django-redis cache that all processes share.",
                    hint="Use BACKEND 'django_redis.cache.RedisCache' (not ShardClient). LocMem "
                    "and Dummy caches are not shared between processes, so a retry that "
                    "reaches another worker would run the view again.",
                    id="django_idempotency.E012",
                )
            )
    lease = getattr(settings, "IDEMPOTENCY_LEASE", None)
    try:
        lease_ok = lease is None or conf.lease_seconds > 0
    except (TypeError, ValueError):
        lease_ok = False
    if not lease_ok or isinstance(lease, bool):
        errors.append(
            checks.Error(
                f"IDEMPOTENCY_LEASE {lease!r} is not a positive duration.",
                hint="Use seconds (e.g. 30) or a datetime.timedelta; the lease is renewed "
                "while the view runs and bounds how long a dead worker's key stays in use.",
                id="django_idempotency.E013",
            )
        )
    return errors
