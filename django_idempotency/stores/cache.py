"""Deprecated: the Redis store is :class:`django_idempotency.stores.redis.RedisStore`.

``IDEMPOTENCY_STORE = "django_idempotency.stores.cache.CacheStore"`` keeps
working, with a system check warning (``django_idempotency.W040``) and a
``DeprecationWarning`` when the store is made.
"""

from __future__ import annotations

import warnings
from typing import Any

from .redis.store import RedisStore, decode, encode

__all__ = ["CacheStore", "decode", "encode"]

OLD_PATH = "django_idempotency.stores.cache.CacheStore"
NEW_PATH = "django_idempotency.stores.redis.RedisStore"


class CacheStore(RedisStore):
    """Deprecated alias of :class:`~django_idempotency.stores.redis.RedisStore`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            f"{OLD_PATH} is deprecated: set IDEMPOTENCY_STORE = {NEW_PATH!r}.",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
