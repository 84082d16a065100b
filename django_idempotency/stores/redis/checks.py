"""The Redis store's system checks (``RedisStore.check`` and, for ``manage.py
check --deploy``, ``RedisStore.check_deployment``); docs/settings.rst lists them."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from ...conf import MIN_LEASE, SHORT_LEASE, conf
from ..base import StoreError

if TYPE_CHECKING:
    from .store import RedisStore

Messages = list[checks.CheckMessage]


def _error(id_: int, msg: str, hint: str) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"django_idempotency.E{id_:03d}")


def _warning(id_: int, msg: str, hint: str | None = None) -> checks.Warning:
    return checks.Warning(msg, hint=hint, id=f"django_idempotency.W{id_:03d}")


def _seconds(name: str) -> float | None:
    """A duration setting in seconds, or None if it is not a finite, positive one."""
    value = conf.raw(name)
    value = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _count(name: str) -> int | None:
    value = conf.raw(name)
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if valid else None


def _options() -> dict[str, Any]:
    alias = conf.raw("IDEMPOTENCY_CACHE")
    cache = getattr(settings, "CACHES", {}).get(alias, {}) if isinstance(alias, str) else {}
    return dict(cache.get("OPTIONS", {}))


def _uses_cluster_client() -> bool:
    from .cluster import RedisClusterClient

    try:
        client_class = import_string(str(_options().get("CLIENT_CLASS", "")))
    except ImportError:
        return False
    return isinstance(client_class, type) and issubclass(client_class, RedisClusterClient)


def check_settings() -> Messages:
    return [*_check_cache(), *_check_lease(), *_check_fail_open(), *_check_replicas()]


def _check_cache() -> Messages:
    from django_redis.cache import RedisCache

    alias = conf.raw("IDEMPOTENCY_CACHE")
    configured = getattr(settings, "CACHES", {})
    if not isinstance(alias, str) or alias not in configured:
        return [
            _error(
                10,
                f"IDEMPOTENCY_CACHE {alias!r} is not a cache alias in CACHES.",
                "Add a django_redis.cache.RedisCache entry to CACHES under that alias, or "
                "set IDEMPOTENCY_CACHE to the alias of one.",
            )
        ]
    backend = str(configured[alias].get("BACKEND", ""))
    sharded = str(_options().get("CLIENT_CLASS", "")).endswith("ShardClient")
    try:
        backend_class = import_string(backend)
    except ImportError:
        backend_class = None
    if isinstance(backend_class, type) and issubclass(backend_class, RedisCache) and not sharded:
        return []
    if sharded:
        hint = (
            "django-redis's ShardClient spreads keys over servers with no raw client "
            "for scripts; use the default client, SentinelClient, or "
            "'django_idempotency.stores.redis.RedisClusterClient' for Redis Cluster."
        )
    elif backend == "django.core.cache.backends.redis.RedisCache":
        hint = (
            "Django's own RedisCache gives no access to a raw redis-py client, which the "
            "store's Lua scripts need: use BACKEND 'django_redis.cache.RedisCache' "
            "(pip install 'django-idempotency[redis]') with the same LOCATION."
        )
    else:
        hint = (
            f"Use BACKEND 'django_redis.cache.RedisCache' (or a subclass). {backend} is "
            "not shared between processes, or cannot run scripts, so a retry that reaches "
            "another worker would run the view again."
        )
    return [
        _error(
            12,
            f"The cache {alias!r} ({backend}) cannot hold idempotency records: the "
            "Redis store needs a django-redis cache that all processes share.",
            hint,
        )
    ]


def _check_lease() -> Messages:
    lease = _seconds("IDEMPOTENCY_LEASE")
    raw = conf.raw("IDEMPOTENCY_LEASE")
    if lease is None or lease < MIN_LEASE.total_seconds():
        return [
            _error(
                13,
                f"IDEMPOTENCY_LEASE {raw!r} is not a duration of "
                f"{MIN_LEASE.total_seconds():g} seconds or more.",
                "Use seconds (e.g. 30) or a datetime.timedelta; the lease is renewed while "
                "the view runs and bounds how long a dead worker's key stays in use.",
            )
        ]
    if lease < SHORT_LEASE.total_seconds():
        return [
            _warning(
                20,
                f"IDEMPOTENCY_LEASE {raw!r} is under {SHORT_LEASE.total_seconds():g} second: "
                "on a loaded server a renewal (every third of the lease) can come too late, "
                "and a duplicate then runs.",
                "The default, 30 seconds, only bounds how long a dead worker's key stays "
                "in use; it does not limit how long a view may run.",
            )
        ]
    return []


def _check_fail_open() -> Messages:
    value = conf.raw("IDEMPOTENCY_FAIL_OPEN")
    if isinstance(value, bool):
        return []
    return [
        _error(
            20,
            f"IDEMPOTENCY_FAIL_OPEN must be True or False, not {value!r}.",
            "A string such as 'false' (read from an environment variable) is not a "
            "boolean; convert it, e.g. os.environ.get('IDEMPOTENCY_FAIL_OPEN') == 'true'.",
        )
    ]


def _check_replicas() -> Messages:
    messages: Messages = []
    replicas = _count("IDEMPOTENCY_REDIS_MIN_REPLICAS")
    wait = _seconds("IDEMPOTENCY_REDIS_WAIT_TIMEOUT")
    budget = _seconds("IDEMPOTENCY_REDIS_TIMEOUT_BUDGET")
    if replicas is None:
        messages.append(
            _error(
                41,
                "IDEMPOTENCY_REDIS_MIN_REPLICAS must be a whole number, 0 or more, not "
                f"{conf.raw('IDEMPOTENCY_REDIS_MIN_REPLICAS')!r}.",
                "0 (the default) does not wait for replicas; 1 or more runs WAIT after each "
                "claim and completion.",
            )
        )
    if wait is None:
        messages.append(
            _error(
                42,
                f"IDEMPOTENCY_REDIS_WAIT_TIMEOUT {conf.raw('IDEMPOTENCY_REDIS_WAIT_TIMEOUT')!r} "
                "is not a positive duration.",
                "Seconds (e.g. 0.5) or a datetime.timedelta: how long a claim waits for "
                "IDEMPOTENCY_REDIS_MIN_REPLICAS replicas before answering 503.",
            )
        )
    if replicas and _uses_cluster_client():
        messages.append(
            _error(
                44,
                "IDEMPOTENCY_REDIS_MIN_REPLICAS needs WAIT on the connection that wrote, which "
                "the cluster client does not offer.",
                "Leave IDEMPOTENCY_REDIS_MIN_REPLICAS at 0 on Redis Cluster, or use Sentinel.",
            )
        )
    if budget is None:
        messages.append(
            _error(
                45,
                "IDEMPOTENCY_REDIS_TIMEOUT_BUDGET "
                f"{conf.raw('IDEMPOTENCY_REDIS_TIMEOUT_BUDGET')!r} is not a positive duration.",
                "Seconds (e.g. 3) or a datetime.timedelta: the most time one request waits "
                "for Redis before it is answered 503.",
            )
        )
    elif replicas and wait is not None and budget < 2 * wait:
        messages.append(
            _warning(
                45,
                f"IDEMPOTENCY_REDIS_TIMEOUT_BUDGET ({budget:g} s) is under twice "
                f"IDEMPOTENCY_REDIS_WAIT_TIMEOUT ({wait:g} s): a request WAITs for replicas "
                "at its claim and at its completion, and may run out of budget on a healthy "
                "deployment whose replica is slow.",
                "Raise the budget, or lower the WAIT timeout.",
            )
        )
    return messages


def check_server(store: RedisStore) -> Messages:
    """Whether the cache's server is a Redis Cluster node behind a plain client."""
    from .store import CLUSTER_CLIENT

    alias = store.alias
    try:
        store.check_cluster(store.client())
    except StoreError as exc:
        return [
            _error(
                43,
                f"IDEMPOTENCY_CACHE {alias!r}: {exc}.",
                f"Set CACHES[{alias!r}]['OPTIONS']['CLIENT_CLASS'] to {CLUSTER_CLIENT!r}.",
            )
        ]
    except Exception as exc:  # the server is not reachable from here: not our call
        return [
            _warning(
                43,
                f"Could not ask the Redis server of cache {alias!r} whether it is a cluster: {exc}",
            )
        ]
    return []
