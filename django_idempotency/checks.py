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


CACHE_STORE = "django_idempotency.stores.cache.CacheStore"


@checks.register(checks.Tags.caches)
def check_cache_store(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The Redis store needs a django-redis cache that every process shares."""
    if conf.IDEMPOTENCY_STORE != CACHE_STORE:
        return []
    from django.conf import settings

    alias = conf.IDEMPOTENCY_CACHE
    cache_settings = getattr(settings, "CACHES", {}).get(alias)
    if cache_settings is None:
        return [
            checks.Error(
                f"IDEMPOTENCY_CACHE {alias!r} is not a cache in CACHES.",
                hint="Add a django_redis.cache.RedisCache entry to CACHES under that alias, "
                "or set IDEMPOTENCY_CACHE to the alias of one.",
                id="django_idempotency.E010",
            )
        ]
    backend = str(cache_settings.get("BACKEND", ""))
    client_class = str(cache_settings.get("OPTIONS", {}).get("CLIENT_CLASS", ""))
    if backend != "django_redis.cache.RedisCache" or client_class.endswith("ShardClient"):
        return [
            checks.Error(
                f"The cache {alias!r} ({backend}) cannot hold idempotency records: the Redis "
                "store needs a django-redis cache that all processes share.",
                hint="Use BACKEND 'django_redis.cache.RedisCache' (not ShardClient). LocMem and "
                "Dummy caches are not shared between processes, so a retry that reaches "
                "another worker would run the view again.",
                id="django_idempotency.E011",
            )
        ]
    return []
