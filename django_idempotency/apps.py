from importlib.util import find_spec

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class IdempotencyConfig(AppConfig):
    name = "django_idempotency"
    verbose_name = _("Idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # registers the system checks
        from .conf import conf

        # Servers such as gunicorn and uvicorn run no system checks: a bad
        # setting stops the process here, with every error and its hint,
        # instead of failing requests.
        checks.ensure_checked()
        # Settings are still read on first use, as documented (a test suite's
        # conftest may set them after Django starts); the first request checks
        # them again, once.
        conf.reload()

        if find_spec("drf_spectacular") is not None:
            # Registers the drf-spectacular extension that documents @idempotent
            # operations. drf-spectacular is optional: without it, nothing to do.
            from .contrib import openapi  # noqa: F401
