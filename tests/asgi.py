"""ASGI entry point for the tests under real ASGI servers (tests/integration/test_asgi_server.py)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
application = get_asgi_application()
