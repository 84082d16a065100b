"""Every setting and @idempotent option is validated where it is given.

A bad value would fail every request (a 500) or silently change a guarantee, so
it is a system check error, an ImproperlyConfigured when the decorator is
applied, or, where the checks never run (gunicorn), an ImproperlyConfigured at
start-up that names the problem.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from rest_framework.test import APIClient

from django_idempotency import idempotent
from django_idempotency.checks import check_settings
from django_idempotency.stores.base import Store
from tests.helpers import check_ids, post

# IDEMPOTENCY_TTL: positive, and not so long that an expiry overflows.


@pytest.mark.parametrize(
    "ttl", [10**12, 10**400, 1e300, timedelta(days=3651), timedelta.max, 86400 * 3651]
)
def test_e004_ttl_too_long(ttl: object) -> None:
    assert check_ids(IDEMPOTENCY_TTL=ttl) == ["django_idempotency.E004"]


@pytest.mark.parametrize("ttl", [timedelta(days=3650), 86400 * 3650, timedelta(days=30)])
def test_long_but_sane_ttls_pass(ttl: object) -> None:
    assert check_ids(IDEMPOTENCY_TTL=ttl) == []


@pytest.mark.django_db
def test_a_ttl_that_would_overflow_every_request_is_refused_with_its_reason(
    client_alice: APIClient,
) -> None:
    # 10**12 seconds would overflow datetime when added to now() in every request.
    refused = pytest.raises(ImproperlyConfigured, match=r"E004.*IDEMPOTENCY_TTL must be at most")
    with override_settings(IDEMPOTENCY_TTL=10**12), refused:
        post(client_alice, "/t/widgets", {"name": "w"}, key="k")


# IDEMPOTENCY_LEASE (the Redis store's): a duration it can renew in time.


def lease_ids(lease: object) -> list[str]:
    pytest.importorskip("django_redis")
    return check_ids(
        IDEMPOTENCY_STORE="django_idempotency.stores.redis.RedisStore",
        IDEMPOTENCY_CACHE="r",
        CACHES={"r": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://x"}},
        IDEMPOTENCY_LEASE=lease,
    )


@pytest.mark.parametrize(
    "lease", [0.0001, 0.003, 0.099, timedelta(milliseconds=10), 0, -1, "30", float("nan")]
)
def test_e013_lease_too_short_or_not_a_duration(lease: object) -> None:
    assert lease_ids(lease) == ["django_idempotency.E013"]


@pytest.mark.parametrize("lease", [0.1, 0.5, timedelta(milliseconds=999)])
def test_w020_a_short_lease_is_a_warning(lease: object) -> None:
    assert lease_ids(lease) == ["django_idempotency.W020"]


@pytest.mark.parametrize("lease", [1, 30, timedelta(minutes=2)])
def test_good_leases_pass(lease: object) -> None:
    assert lease_ids(lease) == []


# IDEMPOTENCY_STORE: a concrete Store, which brings its own checks.


class AbstractStore(Store):
    """Implements begin only: Store's other abstract methods are missing."""

    def begin(self, record: Any) -> Any:
        raise NotImplementedError


def test_e002_an_abstract_store_is_refused() -> None:
    with override_settings(IDEMPOTENCY_STORE=f"{__name__}.AbstractStore"):
        (message,) = check_settings()
    assert message.id == "django_idempotency.E002"
    assert "finish, release" in message.msg


class ConcreteStore(AbstractStore):
    def finish(self, claim: Any, response: Any) -> None:
        raise NotImplementedError

    def release(self, claim: Any, exc: BaseException | None = None) -> None:
        raise NotImplementedError


class StoreWithItsOwnChecks(ConcreteStore):
    @classmethod
    def check(cls) -> list[checks.CheckMessage]:
        return [checks.Error("no backend", hint="configure one", id="thirdparty.E001")]


def test_a_third_party_store_brings_its_own_checks() -> None:
    assert check_ids(IDEMPOTENCY_STORE=f"{__name__}.StoreWithItsOwnChecks") == ["thirdparty.E001"]
    assert check_ids(IDEMPOTENCY_STORE=f"{__name__}.ConcreteStore") == []


def test_the_database_store_checks_its_own_alias() -> None:
    from django_idempotency.stores.database import DatabaseStore

    with override_settings(IDEMPOTENCY_DATABASE="nowhere"):
        assert [m.id for m in DatabaseStore.check()] == ["django_idempotency.E011"]
    assert DatabaseStore.check() == []
    with override_settings(IDEMPOTENCY_DATABASE="default"):
        assert DatabaseStore.check() == []


# IDEMPOTENCY_SCOPE: something that can be called with the request.


def _two_arguments(request: Any, other: Any) -> str:
    return "x"


@pytest.mark.parametrize(
    "scope", [lambda: "everyone", _two_arguments, f"{__name__}._two_arguments"]
)
def test_e006_scope_cannot_take_the_request(scope: object) -> None:
    assert check_ids(IDEMPOTENCY_SCOPE=scope) == ["django_idempotency.E006"]


@pytest.mark.parametrize(
    "scope", [lambda request, *rest: "x", lambda request, extra=None: "x", str]
)
def test_scopes_that_take_the_request_pass(scope: object) -> None:
    assert check_ids(IDEMPOTENCY_SCOPE=scope) == []


# IDEMPOTENCY_SHOULD_RETRY_HEADERS: a list or tuple of header names, never one string.


@pytest.mark.parametrize(
    "names",
    [
        "X-Should-Retry",
        b"X-Should-Retry",
        None,
        {"X-Should-Retry"},
        [""],
        ["X Should Retry"],
        ["X-Should-Retry", 1],
        ("X-Should-Retry:",),
    ],
)
def test_e015_should_retry_headers_must_be_header_names(names: object) -> None:
    assert check_ids(IDEMPOTENCY_SHOULD_RETRY_HEADERS=names) == ["django_idempotency.E015"]


@pytest.mark.parametrize(
    "names", [(), ["X-Should-Retry"], ("X-Should-Retry", "Stripe-Should-Retry")]
)
def test_should_retry_header_lists_pass(names: object) -> None:
    assert check_ids(IDEMPOTENCY_SHOULD_RETRY_HEADERS=names) == []


@pytest.mark.django_db
def test_a_string_of_should_retry_headers_stops_requests_not_letter_headers(
    client_alice: APIClient,
) -> None:
    with (
        override_settings(IDEMPOTENCY_SHOULD_RETRY_HEADERS="X-Should-Retry"),
        pytest.raises(ImproperlyConfigured, match=r"django_idempotency\.E015"),
    ):
        post(client_alice, "/t/widgets", {"name": "w"}, key="k")


# @idempotent options: refused when the decorator is applied (at import time).


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": 3600}, r"ttl=\.\.\.\) must be a datetime.timedelta, not 3600"),
        ({"ttl": 3600.0}, "must be a datetime.timedelta"),
        ({"ttl": "24h"}, "must be a datetime.timedelta"),
        ({"ttl": timedelta(0)}, "must be positive"),
        ({"ttl": timedelta(hours=-1)}, "must be positive"),
        ({"ttl": timedelta(days=10**6)}, "must be at most 3650 days"),
        ({"ttl": timedelta.max}, "must be at most 3650 days"),
        ({"required": "false"}, r"required=\.\.\.\) must be True or False"),
        ({"required": 0}, "must be True or False"),
    ],
)
def test_bad_decorator_options_fail_at_import_time(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):

        @idempotent(**options)
        def view(request: Any) -> Any:  # pragma: no cover - never defined
            raise AssertionError


@pytest.mark.parametrize(
    "options", [{}, {"ttl": None}, {"ttl": timedelta(minutes=5)}, {"required": False}]
)
def test_good_decorator_options_pass(options: dict[str, Any]) -> None:
    @idempotent(**options)
    def view(request: Any) -> Any:  # pragma: no cover - never called
        raise AssertionError

    assert view._idempotent  # type: ignore[attr-defined]


# Checks on first use: where manage.py never ran them.


@pytest.mark.django_db
def test_first_request_with_a_bad_setting_names_every_problem(client_alice: APIClient) -> None:
    bad = {"IDEMPOTENCY_SCOPE": "myapp.nowhere.scope", "IDEMPOTENCY_RETRY_AFTER": -1}
    with override_settings(**bad):
        for _ in range(2):  # the second request fails the same way, without re-running
            with pytest.raises(ImproperlyConfigured) as raised:
                post(client_alice, "/t/widgets", {"name": "w"}, key="k")
            assert "django_idempotency.E005" in str(raised.value)
            assert "django_idempotency.E009" in str(raised.value)
    # Restored settings: requests work again.
    assert post(client_alice, "/t/widgets", {"name": "w"}, key="k").status_code == 201


@pytest.mark.django_db
def test_silenced_errors_and_warnings_do_not_stop_requests(client_alice: APIClient) -> None:
    with override_settings(
        IDEMPOTENCY_RETRY_AFTER=-1,
        SILENCED_SYSTEM_CHECKS=["django_idempotency.E009"],
        IDEMPOTENCY_RELEASED_STATUSES={201},  # W001
    ):
        assert post(client_alice, "/t/widgets", {"name": "w"}, key="k").status_code == 201
