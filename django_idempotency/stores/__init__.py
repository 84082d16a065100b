"""Where idempotency records live: the Store interface and its implementations."""

from __future__ import annotations

from functools import lru_cache

from django.utils.module_loading import import_string

from ..conf import conf
from .base import (
    Claim,
    Conflict,
    InUse,
    Replay,
    RequestRecord,
    Store,
    StoredResponse,
    StoreError,
    StoreMisconfigured,
)


@lru_cache(maxsize=8)
def _build(path: str) -> Store:
    store_class = import_string(path)
    store: Store = store_class()
    return store


def get_store() -> Store:
    """The store named by ``IDEMPOTENCY_STORE`` (one shared instance per class path)."""
    return _build(conf.IDEMPOTENCY_STORE)


__all__ = [
    "Claim",
    "Conflict",
    "InUse",
    "Replay",
    "RequestRecord",
    "Store",
    "StoreError",
    "StoreMisconfigured",
    "StoredResponse",
    "get_store",
]
