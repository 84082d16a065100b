"""Settings for the benchmark servers.

``BENCH_SERVER`` picks the idempotency mechanism that this process runs:

* ``db`` (default): this project's ``@idempotent`` on the database store; also
  serves the undecorated baseline and drf-idempotencykey's mixin view;
* ``redis``: ``@idempotent`` on the Redis store (``RedisStore``);
* ``db-sealed`` / ``redis-sealed``: the same, with ``IDEMPOTENCY_ENCRYPTION_KEYS`` set;
* ``drfi-db`` / ``drfi-redis``: drf-idempotency's middleware with its database or
  Redis backend, around the undecorated view.

Everything else (view, authentication, database, middleware) is the same.
"""

from __future__ import annotations

import importlib.util
import os
from urllib.parse import unquote, urlsplit

SERVER = os.environ.get("BENCH_SERVER", "db")
DATABASE_URL = os.environ.get(
    "DATABASE_URL", "postgres://idempotency:idempotency@127.0.0.1:5432/bench"
)
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Redis is shared with other users: everything this run writes carries this
# prefix and expires by itself; nothing is ever flushed.
REDIS_PREFIX = os.environ.get("BENCH_REDIS_PREFIX", "djidem-bench")

SECRET_KEY = "benchmarks-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "benchproject.urls"
WSGI_APPLICATION = "benchproject.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    # TokenAuthentication's table, for the configurations that authenticate
    # with a database query (the "-token" ones; see views.py).
    "rest_framework.authtoken",
    "django_idempotency",
    "benchproject",
]
# The peers' apps are installed (models and migrations) in every server, so one
# database serves all; only their request handling differs per server.
INSTALLED_APPS += [app for app in ("drf_idempotency", "drf_idempotencykey") if _installed(app)]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

_db = urlsplit(DATABASE_URL)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/"),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": str(_db.port or ""),
        # Persistent connections, as any production deployment has.
        "CONN_MAX_AGE": 600,
    }
}

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "idempotency": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_PREFIX,
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["benchproject.auth.BearerAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}

# This project: records kept 10 minutes, long enough for any run.
IDEMPOTENCY_TTL = 600
IDEMPOTENCY_CACHE = "idempotency"
if SERVER in ("redis", "redis-sealed"):
    IDEMPOTENCY_STORE = "django_idempotency.stores.redis.RedisStore"
# encryption.py: the same stores, with stored responses encrypted at rest.
if SERVER.endswith("-sealed"):
    IDEMPOTENCY_ENCRYPTION_KEYS = ["cW4Cl4AkcEDHdbTMJ8ZcJ6jU1d4jvb1X6QY0HmxU3Fo="]
# The claim as it was before migration 0005, for comparison in the same run.
if SERVER == "db-write-first":
    IDEMPOTENCY_STORE = "benchproject.stores.WriteFirstStore"

# bench_asgi.py: plain Django views under uvicorn. Django's persistent
# connections do not work under ASGI (each request runs its sync code in a
# thread of its own), so every request connects anew, unless BENCH_DB_POOL=1
# turns on Django 5.1+'s psycopg connection pool.
if SERVER == "asgi":
    IDEMPOTENCY_SCOPE = "benchproject.async_views.bearer_scope"
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    if os.environ.get("BENCH_DB_POOL") == "1":
        DATABASES["default"]["OPTIONS"] = {
            "pool": {"min_size": 4, "max_size": int(os.environ.get("BENCH_POOL_SIZE", "16"))}
        }

# drf-idempotency: configured only where its middleware runs.
if SERVER.startswith("drfi-"):
    MIDDLEWARE.append("drf_idempotency.middleware.IdempotencyMiddleware")
    IDEMPOTENCY = {"METHODS": ["POST"], "TTL_SECONDS": 600}
    if SERVER == "drfi-redis":
        IDEMPOTENCY["BACKEND"] = "drf_idempotency.backends.redis.RedisBackend"
        IDEMPOTENCY["BACKEND_OPTIONS"] = {"url": REDIS_URL, "key_prefix": REDIS_PREFIX + "-drfi:"}
