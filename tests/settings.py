"""Settings for the test suite.

The database comes from ``DATABASE_URL`` (default: a SQLite file, so that
threads in the concurrency tests each get a real connection to one database).
``scripts/test`` runs the suite on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import copy
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import dj_database_url
import django

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "rest_framework.authtoken",  # the upload tests' token callers
    "django_idempotency",
    "testproject.api",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_idempotency.contrib.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

_sqlite_file = os.environ.get("SQLITE_TEST_FILE", str(BASE_DIR / ".test-db.sqlite3"))
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or "sqlite:///" + _sqlite_file,
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so that concurrent threads share one database.
    DATABASES["default"]["TEST"] = {"NAME": _sqlite_file}
    # TEST_SQLITE_TIMEOUT: a server that a test starts with a short busy timeout.
    DATABASES["default"]["OPTIONS"] = {"timeout": float(os.environ.get("TEST_SQLITE_TIMEOUT", 20))}
    if django.VERSION >= (5, 1):
        # As docs/stores.rst recommends: requests queue for SQLite's one write lock
        # instead of failing when a read transaction tries to upgrade.
        DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
        # The test database need not survive a power cut: no fsync per commit.
        # Locking, which the concurrency tests are about, is the same.
        DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA synchronous=OFF"
elif DATABASES["default"]["ENGINE"].endswith("mysql"):
    # MariaDB or MySQL (DATABASE_URL=mysql://...). Django's default isolation
    # there is READ COMMITTED; TEST_MYSQL_ISOLATION sets another for a server
    # that a test starts (tests/integration/test_mysql.py runs both).
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
    if os.environ.get("TEST_MYSQL_ISOLATION"):
        DATABASES["default"]["OPTIONS"]["isolation_level"] = os.environ["TEST_MYSQL_ISOLATION"]

# tests/unit/stores/test_routing.py: "second", a database of its own, where a router may
# send the records; "standby", a read-only copy of "default" (the test's own
# replica; TEST_STANDBY_URL makes it a real streaming replica, as
# tests/integration/test_scale.py does). Django makes their test databases only for the
# tests that ask for them (databases=[...]).
DATABASES["second"] = copy.deepcopy(DATABASES["default"])
if DATABASES["second"]["ENGINE"].endswith("sqlite3"):
    _second_file = str(Path(_sqlite_file).with_suffix(".second.sqlite3"))
    DATABASES["second"]["NAME"] = DATABASES["second"]["TEST"]["NAME"] = _second_file
else:
    DATABASES["second"]["NAME"] = f"{DATABASES['default']['NAME']}_second"
if os.environ.get("TEST_STANDBY_URL"):
    DATABASES["standby"] = dj_database_url.parse(os.environ["TEST_STANDBY_URL"], conn_max_age=0)
    DATABASE_ROUTERS = [
        "django_idempotency.stores.database.routers.GuardedReadsRouter",
        "tests.routers.PrimaryStandbyRouter",
    ]
else:
    DATABASES["standby"] = copy.deepcopy(DATABASES["default"])
    DATABASES["standby"]["TEST"] = {"MIRROR": "default"}
    DATABASE_ROUTERS = ["tests.routers.StandbyIsReadOnly"]
# ATOMIC_REQUESTS for a server that a test starts (tests/integration/test_mysql.py).
if os.environ.get("TEST_ATOMIC_REQUESTS") == "1":
    DATABASES["default"]["ATOMIC_REQUESTS"] = True

CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
# The Redis store's cache, used when a test (or the TEST_IDEMPOTENCY_STORE of a
# gunicorn server it starts) selects RedisStore. The prefix is unique to the
# test run and inherited by the servers it starts, so tests touch only their
# own keys on a shared Redis.
REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_TEST_PREFIX = os.environ.setdefault("REDIS_TEST_PREFIX", f"idem-test-{os.getpid()}")
if REDIS_URL and find_spec("django_redis") is not None:  # optional: see require_redis()
    CACHES["redis"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_TEST_PREFIX,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
    }
IDEMPOTENCY_CACHE = "redis"
IDEMPOTENCY_STORE = os.environ.get(
    "TEST_IDEMPOTENCY_STORE", "django_idempotency.stores.database.DatabaseStore"
)
if os.environ.get("TEST_IDEMPOTENCY_LEASE"):
    IDEMPOTENCY_LEASE = float(os.environ["TEST_IDEMPOTENCY_LEASE"])
if os.environ.get("TEST_IDEMPOTENCY_SCOPE"):
    IDEMPOTENCY_SCOPE = os.environ["TEST_IDEMPOTENCY_SCOPE"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Basic first, so an unauthenticated call gets its 401. (The demo's
        # views, mounted here for its tests, declare their own API keys.)
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "django_idempotency.exception_handler",
    # DRF's defaults, with a JSON parser that answers 400, not 500, to deep JSON.
    "DEFAULT_PARSER_CLASSES": [
        "tests.testapp.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
if find_spec("drf_spectacular") is not None:
    # As drf-spectacular's installation asks (optional: one test session runs without it).
    REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
