"""Settings of the demo project, read from the environment.

DATABASE_URL       default: SQLite file testproject/db.sqlite3
REDIS_URL          if set, the default cache is Redis (for the Redis idempotency store)
IDEMPOTENCY_STORE  dotted path of the idempotency store, passed through when set
IDEMPOTENCY_LEASE  seconds of a Redis claim's lease, passed through when set
DJANGO_DEBUG       1 turns Django's DEBUG on (default off; API errors are JSON either way)
SECRET_KEY         default: a fixed, public demo value
DEMO_ALLOW_DELAY   1 lets the X-Demo-Delay header slow down job creation inside its
                   transaction, and X-Demo-Delay-After-Commit after it (tests only)
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import dj_database_url
import django

BASE_DIR = Path(__file__).resolve().parent


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get("SECRET_KEY", "django-idempotency-demo-not-a-secret")
# Off unless asked for: debug pages list the URL patterns and settings.
DEBUG = _env_flag("DJANGO_DEBUG", False)
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_idempotency",
    "testproject.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_idempotency.contrib.middleware.DatabaseUnavailableMiddleware",
    "testproject.api.middleware.JsonErrorsMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {"default": dj_database_url.config(default="sqlite:///" + str(BASE_DIR / "db.sqlite3"))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite has one writer at a time: let a waiting writer wait (timeout), and
    # take the write lock when a transaction begins rather than at its first
    # write, so two transactions can't both read and then fail to upgrade.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20}
    if django.VERSION >= (5, 1):
        DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"

if os.environ.get("REDIS_URL"):
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": os.environ["REDIS_URL"],
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

if os.environ.get("IDEMPOTENCY_STORE"):
    IDEMPOTENCY_STORE = os.environ["IDEMPOTENCY_STORE"]
if os.environ.get("IDEMPOTENCY_LEASE"):
    IDEMPOTENCY_LEASE = float(os.environ["IDEMPOTENCY_LEASE"])

DEMO_ALLOW_DELAY = _env_flag("DEMO_ALLOW_DELAY", False)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["testproject.api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["testproject.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "django_idempotency.exception_handler",
}

if find_spec("drf_spectacular") is not None:
    # The OpenAPI schema at /v1/schema and Swagger UI at /v1/docs. The sidecar
    # serves Swagger UI's files from static files rather than a CDN, so the
    # docs work offline.
    INSTALLED_APPS += ["drf_spectacular", "drf_spectacular_sidecar"]
    REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"
    SPECTACULAR_SETTINGS = {
        "TITLE": "django-idempotency demo API",
        "DESCRIPTION": (
            "A jobs API for data collection: accounts with credits, jobs that reserve them, "
            "credit purchases and API keys. Every POST takes an Idempotency-Key header; "
            "retrying with the same key replays the first response instead of running again."
        ),
        "VERSION": "1",
        "SERVE_INCLUDE_SCHEMA": False,
        "SWAGGER_UI_DIST": "SIDECAR",
        "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
        "REDOC_DIST": "SIDECAR",
        # Each resource's "object" is an enum of one value: one component each.
        "ENUM_NAME_OVERRIDES": {
            f"{''.join(w.title() for w in name.split('_'))}ObjectEnum": [name]
            for name in (
                "job",
                "rating",
                "api_key",
                "webhook_endpoint",
                "purchase",
                "account",
                "list",
            )
        },
        "POSTPROCESSING_HOOKS": [
            "drf_spectacular.hooks.postprocess_schema_enums",
            "testproject.api.schema.declare_links_and_request_ids",
        ],
    }

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
