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
