"""The project's task runner: the version matrix, and the contributor sessions.

``scripts/matrix`` (or ``nox``) runs the version matrix; ``nox -s NAME`` runs
one of the others:

* ``lint``: ruff and mypy --strict (what ``scripts/lint`` runs).
* ``format``: ``ruff format --check`` (``nox -s format -- --diff`` shows the diff).
* ``docs``: the Sphinx site in docs/, warnings and unresolved references as
  errors, into docs/_build/html.
* ``coverage``: the suite on SQLite under branch coverage, failing below the
  floor in ``[tool.coverage.report]`` of pyproject.toml.
* ``slow``: only the long suites (``-m slow``: servers started, stopped and
  failed over, real clients over HTTP); they need PostgreSQL and Redis as
  ``scripts/test`` starts them.

Each ``tests`` session installs one combination of Python, Django and Django
REST framework and runs the test suite on SQLite. ``minimal`` runs it without
the optional integrations (django-redis, drf-spectacular): their tests must
skip, and everything else must pass. Sessions tagged ``ci`` are the slice that
``.ci/run`` runs (``scripts/matrix --ci``): the oldest supported versions, and
the newest without the optional packages.

Arguments after ``--`` go to pytest: ``nox -s minimal -- -k replay``.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "minimal"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

LATEST = "latest"
PYPROJECT = nox.project.load_toml(Path(__file__).parent / "pyproject.toml")


def groups(*names: str) -> list[str]:
    """The requirements of dependency groups of pyproject.toml (PEP 735)."""
    return [req for name in names for req in nox.project.dependency_groups(PYPROJECT, name)]


# (Python, Django, DRF). Django 4.2 LTS supports Python up to 3.12, 5.2 LTS
# from 3.10, 6.x from 3.12. DRF 3.15 is the oldest supported DRF; it predates
# Django 5.2, so it is paired with Django 4.2.
MATRIX = [
    nox.param("3.10", "4.2", "3.15", id="py3.10-django4.2-drf3.15", tags=["ci"]),
    nox.param("3.10", "4.2", LATEST, id="py3.10-django4.2-drflatest"),
    nox.param("3.10", "5.2", LATEST, id="py3.10-django5.2-drflatest"),
    nox.param("3.11", "4.2", "3.15", id="py3.11-django4.2-drf3.15"),
    nox.param("3.11", "5.2", LATEST, id="py3.11-django5.2-drflatest"),
    nox.param("3.12", "4.2", LATEST, id="py3.12-django4.2-drflatest"),
    nox.param("3.12", "5.2", LATEST, id="py3.12-django5.2-drflatest"),
    nox.param("3.12", LATEST, LATEST, id="py3.12-djangolatest-drflatest"),
    nox.param("3.13", "5.2", LATEST, id="py3.13-django5.2-drflatest"),
    nox.param("3.13", LATEST, LATEST, id="py3.13-djangolatest-drflatest"),
]


# The lowest versions that the ``redis`` extra allows (its ">=X.Y" pins read as
# "~=X.Y.0"), which the sessions of the oldest DRF install, so that the floors
# are tested.
REDIS_FLOOR = [
    req.replace(">=", "~=") + ".0" for req in PYPROJECT["project"]["optional-dependencies"]["redis"]
]


def requirement(name: str, version: str) -> str:
    # "4.2" means the newest 4.2.x; "latest" the newest release this Python allows.
    return name if version == LATEST else f"{name}~={version}.0"


# The version sessions run tests/integration/test_asgi_server.py under uvicorn only: the
# five servers' matrix takes minutes per run, and scripts/test runs it whole.
ONE_ASGI_SERVER = {"TEST_ASGI_SERVERS": "uvicorn"}


def show_versions(session: nox.Session) -> None:
    session.run(
        "python", "-c",
        "import sys, django, rest_framework, importlib.metadata as m; print('Python',"
        " sys.version.split()[0], '| Django', django.__version__, '| DRF',"
        " rest_framework.__version__, *[f'| {d} {m.version(d)}' for d in ('redis',"
        " 'django-redis') if __import__('importlib.util').util.find_spec(d.replace('-', '_'))])",
    )  # fmt: skip


@nox.session
@nox.parametrize(("python", "django", "drf"), MATRIX)
def tests(session: nox.Session, django: str, drf: str) -> None:
    """The suite with every integration installed, on one version combination
    (with the oldest DRF, the oldest redis-py and django-redis too)."""
    floor = REDIS_FLOOR if drf != LATEST else []
    session.install(
        "-e", ".[redis,openapi]", *groups("test", "demo"),
        requirement("django", django), requirement("djangorestframework", drf), *floor,
    )  # fmt: skip
    show_versions(session)
    session.run("python", "-m", "pytest", *session.posargs, env=ONE_ASGI_SERVER)


@nox.session(python="3.13", tags=["ci"])
def minimal(session: nox.Session) -> None:
    """The suite without django-redis and drf-spectacular, on the newest releases."""
    session.install("-e", ".", *groups("test"), "django", "djangorestframework")
    session.run(
        "python", "-c",
        "import importlib.util as u, sys; extra = [m for m in ('django_redis', 'drf_spectacular')"
        " if u.find_spec(m)]; sys.exit(f'installed, but must not be: {extra}' if extra else 0)",
    )  # fmt: skip
    show_versions(session)
    session.run("python", "-m", "pytest", *session.posargs, env=ONE_ASGI_SERVER)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, and mypy --strict on the package."""
    session.install("-e", ".[redis,openapi]", *groups("lint"))
    session.run("ruff", "check", ".")
    session.run("mypy")


@nox.session(name="format")
def format_check(session: nox.Session) -> None:
    """ruff format --check over the tree."""
    session.install(*[req for req in groups("lint") if req.startswith("ruff")])
    session.run("ruff", "format", "--check", *session.posargs, ".")


@nox.session
def docs(session: nox.Session) -> None:
    """The Sphinx site, with every warning and every unresolved reference an error."""
    session.install("-e", ".[redis,openapi]", *groups("docs"))
    session.run(
        "python", "-m", "sphinx", "-W", "-n", "--keep-going", "-b", "html",
        "docs", "docs/_build/html", *session.posargs,
    )  # fmt: skip


@nox.session
def coverage(session: nox.Session) -> None:
    """Branch coverage of django_idempotency/ by the suite, with its floor."""
    session.install("-e", ".[redis,openapi]", *groups("test", "demo"))
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "combine", "-q")
    session.run("coverage", "report")


@nox.session
def slow(session: nox.Session) -> None:
    """The long suites only: servers started, stopped and failed over; real clients."""
    session.install("-e", ".[redis,openapi]", *groups("test", "demo"))
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)
