"""Sphinx configuration of the django-idempotency documentation.

Built by ``nox -s docs`` (warnings are errors) and by Read the Docs
(.readthedocs.yaml). autodoc imports the package, so Django is configured here
with the least that its modules need.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import django
from django.conf import settings

if TYPE_CHECKING:
    from sphinx.application import Sphinx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

settings.configure(
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "rest_framework",
        "django_idempotency",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    USE_TZ=True,
)
django.setup()

import django_idempotency  # noqa: E402

project = "django-idempotency"
author = "django-idempotency developers"
copyright = "django-idempotency developers"
release = django_idempotency.__version__
version = release

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
exclude_patterns = ["_build"]
# Code blocks are Python unless they say otherwise.
highlight_language = "python3"

# Types of Python, Django and DRF that the API's signatures name. Linking them
# would take intersphinx, which fetches inventories over the network at every
# build; nitpicky mode (-n) still reports any other unresolved reference.
nitpick_ignore = [
    ("py:class", name)
    for name in (
        "datetime.datetime",
        "datetime.timedelta",
        "collections.abc.Callable",
        "django.core.checks.messages.CheckMessage",
        "django.http.request.HttpRequest",
        "django.http.response.HttpResponseBase",
        "rest_framework.request.Request",
        "rest_framework.exceptions.APIException",
    )
]

html_theme = "furo"
html_title = f"django-idempotency {release}"
html_static_path: list[str] = []


def setup(app: Sphinx) -> None:
    # ``.. setting:: NAME`` marks where docs/settings.rst describes a setting,
    # and ``:setting:`NAME``` links to it from any page, as in Django's docs.
    app.add_crossref_type("setting", "setting", indextemplate="pair: %s; setting")
