"""A django-redis ``CLIENT_CLASS`` for Redis Cluster (docs/redis.rst shows its
settings): django-redis's default client talks to one node, which answers
``MOVED`` for every key whose slot another node serves."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import unquote, urlparse

from django_redis.client import DefaultClient
from redis.backoff import FullJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .scripts import BudgetBackoff

# One RedisCluster per process and configuration: it is thread-safe, and
# django-redis makes a client per cache object, so per thread.
_clusters: dict[tuple[Any, ...], RedisCluster] = {}
_lock = threading.Lock()


class RedisClusterClient(DefaultClient):  # type: ignore[misc]
    """django-redis's client over :class:`redis.cluster.RedisCluster`: every
    LOCATION is a startup node of one cluster, not a replica."""

    def __init__(self, server: Any, params: dict[str, Any], backend: Any) -> None:
        super().__init__(server, params, backend)
        self.startup_urls = server.split(",") if isinstance(server, str) else list(server)
        self.options: dict[str, Any] = params.get("OPTIONS", {})

    def get_next_client_index(self, write: bool = True, tried: list[int] | None = None) -> int:
        return 0

    def connect(self, index: int = 0) -> Any:
        nodes: list[ClusterNode] = []
        kwargs: dict[str, Any] = {}
        for url in self.startup_urls:
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
            if self.options.get(option) is not None:
                kwargs[argument] = self.options[option]
        kwargs.update(self.options.get("REDIS_CLIENT_KWARGS", {}))
        identity = (
            tuple((n.host, n.port) for n in nodes),
            tuple(sorted((k, repr(v)) for k, v in kwargs.items())),
        )
        with _lock:
            cluster = _clusters.get(identity)
            if cluster is None:
                cluster = RedisCluster(startup_nodes=nodes, **kwargs)
                # The cluster client retries a connection error with a growing
                # delay, which socket timeouts do not bound: the store's calls
                # end their retries at IDEMPOTENCY_REDIS_TIMEOUT_BUDGET.
                backoff = BudgetBackoff(FullJitterBackoff(cap=10, base=1))
                cluster.set_retry(Retry(backoff, cluster.retry.get_retries()))
                _clusters[identity] = cluster
        return cluster

    def disconnect(self, index: int = 0, client: Any = None) -> None:
        # Shared by every thread of the process: closing it for one
        # (django-redis's CLOSE_CONNECTION) would close it for all.
        return None
