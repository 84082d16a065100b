from importlib.util import find_spec

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class IdempotencyConfig(AppConfig):
    name = "django_idempotency"
    verbose_name = _("Idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)

        if find_spec("drf_spectacular") is not None:
            # Registers the drf-spectacular extension that documents @idempotent
            # operations. drf-spectacular is optional: without it, nothing to do.
            from . import openapi  # noqa: F401
