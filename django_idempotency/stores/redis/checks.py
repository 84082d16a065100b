"""The Redis store's system checks (``RedisStore.check`` and, for ``manage.py
check --deploy``, ``RedisStore.check_deployment``); docs/settings.rst lists them."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string
from django_redis.cache import RedisCache

from ...conf import MIN_LEASE, SHORT_LEASE, conf
from ..base import StoreError
from .cluster import RedisClusterClient

if TYPE_CHECKING:
    from .store import RedisStore

CLUSTER_CLIENT = "django_idempotency.stores.redis.RedisClusterClient"
# Duration settings: their check id, the least value and what a value means.
DURATIONS = {
    "IDEMPOTENCY_LEASE": (
        13,
        MIN_LEASE.total_seconds(),
        "Use seconds (e.g. 30) or a datetime.timedelta; the lease is renewed while "
        "the view runs and bounds how long a dead worker's key stays in use.",
    ),
    "IDEMPOTENCY_REDIS_WAIT_TIMEOUT": (
        42,
        0,
        "Seconds (e.g. 0.5) or a datetime.timedelta: how long a claim waits for "
        "IDEMPOTENCY_REDIS_MIN_REPLICAS replicas before answering 503.",
    ),
    "IDEMPOTENCY_REDIS_TIMEOUT_BUDGET": (
        45,
        0,
        "Seconds (e.g. 3) or a datetime.timedelta: the most time one request waits "
        "for Redis before it is answered 503.",
    ),
}


def _seconds(name: str) -> float | None:
    """A duration setting in seconds, or None if it is not a valid one."""
    value = conf.raw(name)
    value = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    least = DURATIONS[name][1]
    return float(value) if value > 0 and value >= least else None


def check_settings() -> list[CheckMessage]:
    messages = _check_cache()
    for name, (id_, least, hint) in DURATIONS.items():
        if _seconds(name) is None:
            what = f"duration of {least:g} seconds or more" if least else "positive duration"
            msg = f"{name} {conf.raw(name)!r} is not a {what}."
            messages.append(Error(msg, hint=hint, id=f"django_idempotency.E{id_:03d}"))
    lease, wait, budget = (_seconds(name) for name in DURATIONS)
    if lease is not None and lease < SHORT_LEASE.total_seconds():
        messages.append(
            Warning(
                f"IDEMPOTENCY_LEASE {conf.raw('IDEMPOTENCY_LEASE')!r} is under "
                f"{SHORT_LEASE.total_seconds():g} second: on a loaded server a renewal (every "
                "third of the lease) can come too late, and a duplicate then runs.",
                hint="The default, 30 seconds, only bounds how long a dead worker's key stays "
                "in use; it does not limit how long a view may run.",
                id="django_idempotency.W020",
            )
        )
    if not isinstance(conf.raw("IDEMPOTENCY_FAIL_OPEN"), bool):
        messages.append(
            Error(
                f"IDEMPOTENCY_FAIL_OPEN must be True or False, not "
                f"{conf.raw('IDEMPOTENCY_FAIL_OPEN')!r}.",
                hint="A string such as 'false' (read from an environment variable) is not a "
                "boolean; convert it, e.g. os.environ.get('IDEMPOTENCY_FAIL_OPEN') == 'true'.",
                id="django_idempotency.E020",
            )
        )
    replicas = conf.raw("IDEMPOTENCY_REDIS_MIN_REPLICAS")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        messages.append(
            Error(
                f"IDEMPOTENCY_REDIS_MIN_REPLICAS must be a whole number, 0 or more, not "
                f"{replicas!r}.",
                hint="0 (the default) does not wait for replicas; 1 or more runs WAIT after "
                "each claim and completion.",
                id="django_idempotency.E041",
            )
        )
    elif replicas and _uses_cluster_client():
        messages.append(
            Error(
                "IDEMPOTENCY_REDIS_MIN_REPLICAS needs WAIT on the connection that wrote, which "
                "the cluster client does not offer.",
                hint="Leave it at 0 on Redis Cluster, or use Sentinel.",
                id="django_idempotency.E044",
            )
        )
    elif replicas and wait is not None and budget is not None and budget < 2 * wait:
        messages.append(
            Warning(
                f"IDEMPOTENCY_REDIS_TIMEOUT_BUDGET ({budget:g} s) is under twice "
                f"IDEMPOTENCY_REDIS_WAIT_TIMEOUT ({wait:g} s): a request WAITs for replicas "
                "at its claim and at its completion, and may run out of budget on a healthy "
                "deployment whose replica is slow.",
                hint="Raise the budget, or lower the WAIT timeout.",
                id="django_idempotency.W045",
            )
        )
    return messages


def _cache() -> dict[str, Any] | None:
    alias = conf.raw("IDEMPOTENCY_CACHE")
    found = getattr(settings, "CACHES", {}).get(alias) if isinstance(alias, str) else None
    return dict(found) if isinstance(found, dict) else None


def _uses_cluster_client() -> bool:
    try:
        client_class = import_string(str((_cache() or {}).get("OPTIONS", {}).get("CLIENT_CLASS")))
    except ImportError:
        return False
    return isinstance(client_class, type) and issubclass(client_class, RedisClusterClient)


def _check_cache() -> list[CheckMessage]:
    alias, cache = conf.raw("IDEMPOTENCY_CACHE"), _cache()
    if cache is None:
        return [
            Error(
                f"IDEMPOTENCY_CACHE {alias!r} is not a cache alias in CACHES.",
                hint="Add a django_redis.cache.RedisCache entry to CACHES under that alias, "
                "or set IDEMPOTENCY_CACHE to the alias of one.",
                id="django_idempotency.E010",
            )
        ]
    backend = str(cache.get("BACKEND", ""))
    client_class = str(cache.get("OPTIONS", {}).get("CLIENT_CLASS", ""))
    try:
        backend_class = import_string(backend)
    except ImportError:
        backend_class = None
    sharded = client_class.endswith("ShardClient")
    if isinstance(backend_class, type) and issubclass(backend_class, RedisCache) and not sharded:
        return []
    return [
        Error(
            f"The cache {alias!r} ({backend}) cannot hold idempotency records: the "
            "Redis store needs a django-redis cache that all processes share.",
            hint="Use BACKEND 'django_redis.cache.RedisCache' (or a subclass; pip install "
            "'django-idempotency[redis]') with its default client, SentinelClient or "
            f"{CLUSTER_CLIENT!r}: Django's own RedisCache and django-redis's ShardClient "
            "give no raw redis-py client for the store's Lua scripts, and the other "
            "backends are not shared between processes.",
            id="django_idempotency.E012",
        )
    ]


def check_server(store: RedisStore) -> list[CheckMessage]:
    """Whether the cache's server is a Redis Cluster node behind a plain client."""
    alias = store.alias
    try:
        store.check_cluster(store.client())
    except StoreError as exc:
        return [
            Error(
                f"IDEMPOTENCY_CACHE {alias!r}: {exc}.",
                hint=f"Set CACHES[{alias!r}]['OPTIONS']['CLIENT_CLASS'] to {CLUSTER_CLIENT!r}.",
                id="django_idempotency.E043",
            )
        ]
    except Exception as exc:  # the server is not reachable from here: not our call
        msg = f"Could not ask the Redis server of cache {alias!r} whether it is a cluster: {exc}"
        return [Warning(msg, id="django_idempotency.W043")]
    return []
