"""Django settings for benchmarks/purge.py and the purge command it runs."""

from __future__ import annotations

import os

import dj_database_url

DEFAULT_URL = "postgres://idempotency:idempotency@127.0.0.1:5432/idempotency_bench_purge"

SECRET_KEY = "benchmark-only"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_idempotency"]
DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL") or DEFAULT_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
