"""Where records live: ``get_store()`` and the Store interface's names."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.apps import apps
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from ..conf import conf
from .base import (
    Claim,
    Conflict,
    Decision,
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
    if not apps.is_installed("django_idempotency"):
        # No table, no checks, and the database store's model cannot be
        # imported. Not cached: raised each time.
        raise StoreMisconfigured(
            'django_idempotency is not in INSTALLED_APPS: add "django_idempotency" '
            "to INSTALLED_APPS and run `manage.py migrate`"
        )
    store: Store = import_string(path)()
    return store


@receiver(setting_changed)
def _forget_stores(*, setting: str, **kwargs: Any) -> None:
    if setting == "INSTALLED_APPS":  # override_settings in tests
        _build.cache_clear()


def get_store() -> Store:
    """The store named by ``IDEMPOTENCY_STORE``, one instance per class path;
    :class:`StoreMisconfigured` if the app is not installed."""
    return _build(conf.IDEMPOTENCY_STORE)


__all__ = [
    "Claim",
    "Conflict",
    "Decision",
    "InUse",
    "Replay",
    "RequestRecord",
    "Store",
    "StoreError",
    "StoreMisconfigured",
    "StoredResponse",
    "get_store",
]
