"""ASGI entry point for the tests under a real ASGI server (uvicorn serves tests.urls)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
application = get_asgi_application()
