"""The Redis store, through django-redis (docs/redis.rst).

``store`` holds the store, ``scripts`` its Lua scripts and time budget,
``records`` the format of a stored value, ``lease`` the renewal of running
claims and the retries of completions, ``commit`` the wait for the view's
transaction, ``cluster`` the Redis Cluster client and ``checks`` the system checks.
"""

from .cluster import RedisClusterClient
from .store import RedisStore

__all__ = ["RedisClusterClient", "RedisStore"]
