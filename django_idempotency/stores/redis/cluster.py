"""A django-redis ``CLIENT_CLASS`` for Redis Cluster.

django-redis ships no cluster client: its default client talks to one node,
which answers ``MOVED`` for every key whose hash slot another node serves.
This one hands out a :class:`redis.cluster.RedisCluster` (redis-py 4.1+),
which follows the cluster's slot map::

    CACHES = {
        "idempotency": {
            "BACKEND": "django_redis.cache.RedisCache",
            # Any (or every) node of the cluster: they are startup nodes.
            "LOCATION": "redis://10.0.0.1:6379,redis://10.0.0.2:6379",
            "OPTIONS": {
                "CLIENT_CLASS": "django_idempotency.stores.redis_cluster.RedisClusterClient",
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
            },
        },
    }

The Redis store keeps each record in one key, and runs each script on that one
key, so every command goes to the node that owns the record's slot. Other
cache operations that touch several keys at once (``get_many``, ``delete_many``,
``keys``, ``clear``) work only where redis-py's cluster client supports them.
One ``RedisCluster`` is shared per process and LOCATION: it is thread-safe, and
Django makes a cache object (and so a client) per thread.

redis-py's cluster client retries a connection error (ten times by default,
with a growing delay) and refreshes its slot map in between: with a master
down, one command could take many seconds whatever the socket timeouts. Its
retry backoff is wrapped in :class:`~django_idempotency.stores.redis.BudgetBackoff`,
so that the store's calls end within ``IDEMPOTENCY_REDIS_TIMEOUT_BUDGET``.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import unquote, urlparse

from django_redis.client import DefaultClient
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .store import BudgetBackoff

_clusters: dict[tuple[Any, ...], RedisCluster] = {}
_lock = threading.Lock()


class RedisClusterClient(DefaultClient):  # type: ignore[misc]
    """django-redis's client over :class:`redis.cluster.RedisCluster`: every
    LOCATION is a startup node of one cluster, not a replica."""

    def get_next_client_index(self, write: bool = True, tried: list[int] | None = None) -> int:
        return 0

    def connect(self, index: int = 0) -> Any:
        options = self._options
        nodes: list[ClusterNode] = []
        kwargs: dict[str, Any] = {}
        for url in self._server:
            parsed = urlparse(url)
            node = ClusterNode(parsed.hostname or "127.0.0.1", parsed.port or 6379)  # type: ignore[no-untyped-call]
            nodes.append(node)
            if parsed.username:
                kwargs.setdefault("username", unquote(parsed.username))
            if parsed.password:
                kwargs.setdefault("password", unquote(parsed.password))
            if parsed.scheme == "rediss":
                kwargs["ssl"] = True
        for option, argument in (
            ("USERNAME", "username"),
            ("PASSWORD", "password"),
            ("SOCKET_TIMEOUT", "socket_timeout"),
            ("SOCKET_CONNECT_TIMEOUT", "socket_connect_timeout"),
        ):
            if options.get(option) is not None:
                kwargs[argument] = options[option]
        kwargs.update(options.get("REDIS_CLIENT_KWARGS", {}))
        identity = (
            tuple((n.host, n.port) for n in nodes),
            tuple(sorted((k, repr(v)) for k, v in kwargs.items())),
        )
        with _lock:
            cluster = _clusters.get(identity)
            if cluster is None:
                cluster = RedisCluster(startup_nodes=nodes, **kwargs)
                retry = cluster.retry
                backoff = getattr(retry, "_backoff", None) or NoBackoff()
                cluster.set_retry(Retry(BudgetBackoff(backoff), retry.get_retries()))
                _clusters[identity] = cluster
        return cluster

    def disconnect(self, index: int = 0, client: Any = None) -> None:
        # The cluster client is shared by every thread of the process: closing
        # it for one (django-redis's CLOSE_CONNECTION) would close it for all.
        return None
