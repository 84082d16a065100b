"""The Redis store, through django-redis (docs/redis.rst).

``store`` holds the store, ``scripts`` its Lua scripts and time budget,
``records`` the format of a stored value, ``claims`` the lease renewal,
completion after commit and completion retries of running claims,
``cluster`` the Redis Cluster client and ``checks`` the system checks.
"""

from .cluster import RedisClusterClient
from .store import RedisStore

__all__ = ["RedisClusterClient", "RedisStore"]
