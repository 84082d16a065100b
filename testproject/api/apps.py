from importlib.util import find_spec

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "testproject.api"
    label = "api"
    verbose_name = "Demo API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if find_spec("drf_spectacular") is not None:
            from . import schema  # noqa: F401  (registers the bearer key scheme)
