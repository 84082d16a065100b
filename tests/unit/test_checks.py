"""Each system check id, with the setting that trips it and the ones that must not."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.db import connection, connections
from django.test import override_settings

from django_idempotency.checks import check_settings
from django_idempotency.stores.base import Store
from django_idempotency.stores.database.checks import check_database
from tests.helpers import ROOT, check_ids
from tests.servers import run_checked


def test_default_settings_pass() -> None:
    assert check_ids() == []


# Django 6 runs the database-dependent checks too (a JSONField asks SQLite
# whether it supports JSON), on each database that may be migrated, so these
# two need the test databases ("standby" is never migrated: tests.routers).
@pytest.mark.django_db(databases=["default", "second"])
def test_manage_py_check_is_clean() -> None:
    out = StringIO()
    call_command("check", fail_level="WARNING", stdout=out, stderr=out)
    assert "no issues" in out.getvalue()


@pytest.mark.django_db(databases=["default", "second"])
def test_checks_are_registered_with_django() -> None:
    with override_settings(IDEMPOTENCY_TTL=0):
        found = [message.id for message in checks.run_checks()]
    assert "django_idempotency.E004" in found


@pytest.mark.parametrize(
    "store",
    [
        "django_idempotency.stores.nowhere.Store",
        "no_dots_at_all",
        "django_idempotency.stores.database.NoSuchStore",
    ],
)
def test_e001_store_cannot_be_imported(store: str) -> None:
    assert check_ids(IDEMPOTENCY_STORE=store) == ["django_idempotency.E001"]


@pytest.mark.parametrize(
    "store", ["django_idempotency.conf.Settings", "django_idempotency.conf.MAX_TTL"]
)
def test_e002_store_is_not_a_store_class(store: str) -> None:
    assert check_ids(IDEMPOTENCY_STORE=store) == ["django_idempotency.E002"]


@pytest.mark.parametrize("ttl", ["24h", None, [1], True, float("nan"), float("inf")])
def test_e003_ttl_is_not_a_duration(ttl: object) -> None:
    assert check_ids(IDEMPOTENCY_TTL=ttl) == ["django_idempotency.E003"]


@pytest.mark.parametrize("ttl", [0, -1, 0.0, timedelta(0), timedelta(hours=-1)])
def test_e004_ttl_is_not_positive(ttl: object) -> None:
    assert check_ids(IDEMPOTENCY_TTL=ttl) == ["django_idempotency.E004"]


@pytest.mark.parametrize("ttl", [1, 0.5, 86400, timedelta(hours=48)])
def test_good_ttls_pass(ttl: object) -> None:
    assert check_ids(IDEMPOTENCY_TTL=ttl) == []


@pytest.mark.parametrize("scope", ["myapp.nowhere.scope", "django_idempotency.keys.nothing"])
def test_e005_scope_cannot_be_imported(scope: str) -> None:
    assert check_ids(IDEMPOTENCY_SCOPE=scope) == ["django_idempotency.E005"]


@pytest.mark.parametrize("scope", [None, 42, "django_idempotency.keys.MAX_KEY_LENGTH"])
def test_e006_scope_is_not_callable(scope: object) -> None:
    assert check_ids(IDEMPOTENCY_SCOPE=scope) == ["django_idempotency.E006"]


def test_callable_scope_passes() -> None:
    assert check_ids(IDEMPOTENCY_SCOPE=lambda request: "everyone") == []


@pytest.mark.parametrize(
    "statuses",
    [400, "400", b"400", None, {400, "422"}, [400, 99], [600], (True,), {400: "x", 4.5: "y"}],
)
def test_e007_released_statuses_are_not_status_codes(statuses: object) -> None:
    assert check_ids(IDEMPOTENCY_RELEASED_STATUSES=statuses) == ["django_idempotency.E007"]


@pytest.mark.parametrize("statuses", [[], (400, 409), frozenset({400, 401, 403, 422, 429, 503})])
def test_good_released_statuses_pass(statuses: object) -> None:
    assert check_ids(IDEMPOTENCY_RELEASED_STATUSES=statuses) == []


def test_w001_released_statuses_include_success() -> None:
    with override_settings(IDEMPOTENCY_RELEASED_STATUSES={400, 201, 200}):
        (message,) = check_settings()
    assert message.id == "django_idempotency.W001"
    assert message.level == checks.WARNING
    assert "[200, 201]" in message.msg


@pytest.mark.parametrize("header", ["", "Idempotency Key", "Idempotency-Key:", "Kéy", None, 1])
def test_e008_header_is_not_a_token(header: object) -> None:
    assert check_ids(IDEMPOTENCY_HEADER=header) == ["django_idempotency.E008"]


def test_w002_header_with_underscore() -> None:
    assert check_ids(IDEMPOTENCY_HEADER="Idempotency_Key") == ["django_idempotency.W002"]


@pytest.mark.parametrize("header", ["X-Request-Key", "idempotency-key", "Key"])
def test_good_headers_pass(header: str) -> None:
    assert check_ids(IDEMPOTENCY_HEADER=header) == []


@pytest.mark.parametrize("retry_after", [-1, 1.5, "1", None, True])
def test_e009_retry_after_is_not_a_whole_number(retry_after: object) -> None:
    assert check_ids(IDEMPOTENCY_RETRY_AFTER=retry_after) == ["django_idempotency.E009"]


@pytest.mark.parametrize("retry_after", [0, 1, 30])
def test_good_retry_after_passes(retry_after: int) -> None:
    assert check_ids(IDEMPOTENCY_RETRY_AFTER=retry_after) == []


@pytest.mark.usefixtures("database_store")  # E011 is the database store's check
@pytest.mark.parametrize("alias", ["replica", ""])
def test_e011_database_is_not_an_alias(alias: object) -> None:
    assert check_ids(IDEMPOTENCY_DATABASE=alias) == ["django_idempotency.E011"]


@pytest.mark.parametrize("fields", ["secret", None, ["secret", ""], [1], b"key"])
def test_e014_admin_masked_fields_are_not_names(fields: object) -> None:
    assert check_ids(IDEMPOTENCY_ADMIN_MASKED_FIELDS=fields) == ["django_idempotency.E014"]


@pytest.mark.parametrize("fields", [(), ["iban"], {"secret", "token"}])
def test_good_admin_masked_fields_pass(fields: object) -> None:
    assert check_ids(IDEMPOTENCY_ADMIN_MASKED_FIELDS=fields) == []


def test_e011_only_applies_to_the_database_store() -> None:
    # Another store does not use IDEMPOTENCY_DATABASE, so it is not checked.
    assert (
        check_ids(
            IDEMPOTENCY_STORE="tests.unit.test_checks.OtherStore", IDEMPOTENCY_DATABASE="replica"
        )
        == []
    )


def test_each_bad_setting_is_reported_at_once() -> None:
    found = check_ids(
        IDEMPOTENCY_STORE="nowhere.Store",
        IDEMPOTENCY_TTL=-5,
        IDEMPOTENCY_SCOPE=3,
        IDEMPOTENCY_RELEASED_STATUSES=[200],
        IDEMPOTENCY_HEADER="a b",
        IDEMPOTENCY_RETRY_AFTER=-1,
    )
    assert found == [
        "django_idempotency.E001",
        "django_idempotency.E004",
        "django_idempotency.E006",
        "django_idempotency.W001",
        "django_idempotency.E008",
        "django_idempotency.E009",
    ]


class OtherStore(Store):
    """A store that is not the database store, for the E011 test."""

    def begin(self, record: Any) -> Any:
        raise NotImplementedError

    def finish(self, claim: Any, response: Any) -> None:
        raise NotImplementedError

    def release(self, claim: Any, exc: BaseException | None = None) -> None:
        raise NotImplementedError


# E033: the database store on a vendor that no test proves; E021: the setting
# that accepts it must be a real boolean.


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default connection says it is Oracle (the check reads only the vendor)."""
    from django.db import connections

    monkeypatch.setattr(connections["default"], "vendor", "oracle")
    monkeypatch.setattr(connections["default"], "display_name", "Oracle")


@pytest.mark.usefixtures("database_store", "oracle")
def test_e033_an_untested_vendor_is_an_error_naming_it() -> None:
    (message,) = check_settings()
    assert message.id == "django_idempotency.E033"
    assert "'default', on Oracle (vendor 'oracle')" in message.msg
    assert "PostgreSQL, MariaDB/MySQL and SQLite" in message.msg
    assert "IDEMPOTENCY_ALLOW_UNTESTED_DATABASE = True" in message.hint


@pytest.mark.usefixtures("database_store", "oracle")
def test_e033_is_accepted_knowingly_with_the_setting() -> None:
    assert check_ids(IDEMPOTENCY_ALLOW_UNTESTED_DATABASE=True) == []


@pytest.mark.usefixtures("oracle")
def test_e033_leaves_other_stores_alone() -> None:
    assert check_ids(IDEMPOTENCY_STORE="tests.unit.test_checks.OtherStore") == []


@pytest.mark.usefixtures("database_store")
@pytest.mark.parametrize("vendor", ["postgresql", "sqlite", "mysql"])
def test_the_proven_vendors_pass(vendor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connections

    monkeypatch.setattr(connections["default"], "vendor", vendor)
    assert check_ids() == []


@pytest.mark.usefixtures("database_store")
@pytest.mark.parametrize("value", ["true", "False", 1, None])
def test_e021_allow_untested_database_must_be_a_real_boolean(value: object) -> None:
    assert check_ids(IDEMPOTENCY_ALLOW_UNTESTED_DATABASE=value) == ["django_idempotency.E021"]


# W050: @idempotent where no POST reaches it, found through the URLconf.


def test_w050_idempotent_on_handlers_that_never_receive_post() -> None:
    from django_idempotency.checks import check_guarded_views

    with override_settings(ROOT_URLCONF="tests.testapp.never_post"):
        messages = check_guarded_views()
    found = sorted(message.msg for message in messages)
    assert {message.id for message in messages} == {"django_idempotency.W050"}
    assert all(message.hint for message in messages)
    where = "tests.testapp.never_post"
    assert found == [
        f"@idempotent on {where}.JobViewSet.list() guards nothing: its routes send it GET only.",
        f"@idempotent on {where}.JobViewSet.report() guards nothing: its routes send it GET only.",
        f"@idempotent on {where}.JobViewSet.update() guards nothing: its routes send it PUT only.",
        f"@idempotent on {where}.PlainStatusView.get() guards nothing: it handles GET only.",
        f"@idempotent on {where}.StatusView.get() guards nothing: it handles GET only.",
        f"@idempotent on {where}.read_only() guards nothing: it handles GET only.",
    ]


def test_w050_the_test_projects_own_views_pass() -> None:
    from django_idempotency.checks import check_guarded_views

    assert check_guarded_views() == []


@pytest.mark.slow
def test_the_migrate_that_creates_the_table_prints_no_w032(tmp_path: Path) -> None:
    """As a new project does: migrate, add the app, migrate again. The second
    migrate runs the database checks before it creates the table."""
    environ = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        "PYTHONPATH": str(ROOT),
    }
    django_admin = [sys.executable, "-m", "django"]
    run_checked([*django_admin, "migrate", "auth"], cwd=ROOT, env=environ)
    done = subprocess.run(
        [*django_admin, "migrate"], cwd=ROOT, env=environ, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Applying django_idempotency.0001_initial... OK" in done.stdout
    assert "W032" not in done.stdout + done.stderr


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "mysql", reason="runs in the MariaDB pass")
def test_e050_a_mariadb_or_mysql_older_than_the_store_supports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert check_database(databases=["default"]) == []
    older = (10, 5, 27) if connection.mysql_is_mariadb else (8, 0, 0)
    monkeypatch.setitem(connections["default"].__dict__, "mysql_version", older)
    (error,) = check_database(databases=["default"])
    assert error.id == "django_idempotency.E050"
    assert "MariaDB 10.5.27" in error.msg or "MySQL 8.0.0" in error.msg
    assert error.hint
    # Asked only for the database it checks.
    assert check_database(databases=None) == []


@pytest.mark.django_db
def test_e050_says_nothing_elsewhere() -> None:
    if connection.vendor == "mysql":
        pytest.skip("other databases only")
    assert check_database(databases=["default"]) == []
