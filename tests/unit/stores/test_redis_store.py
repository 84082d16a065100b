"""What only the Redis store does: leases, lease loss, worker death, Redis going away.

All against real Redis servers: the shared one of ``REDIS_URL`` and, where a
test stops Redis, a ``redis-server`` of its own on a free port.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

# The Redis store is an optional extra: without django-redis this module skips
# (the matrix's "minimal" session runs without it).
pytest.importorskip("django_redis")

from django.contrib.auth.models import User
from django.test import override_settings
from django_redis.cache import RedisCache
from rest_framework.test import APIClient

from django_idempotency.checks import check_settings
from django_idempotency.conf import conf
from django_idempotency.stores.redis.checks import CLUSTER_CLIENT
from tests.helpers import (
    CACHE_STORE,
    DATABASE_STORE,
    StoreUnderTest,
    check_ids,
    envelope,
    post,
    post_as,
    redis_client,
)
from tests.testapp import views
from tests.testapp.models import Widget

# System checks: no Redis needed.


# The checks read settings only: a django-redis alias of their own, so that they
# mean the same with or without the REDIS_URL that adds the suite's "redis" alias.
CHECKED_CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "redis": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"},
}


def errors(**settings: Any) -> list[str]:
    settings.setdefault("CACHES", CHECKED_CACHES)
    settings.setdefault("IDEMPOTENCY_CACHE", "redis")
    return check_ids(IDEMPOTENCY_STORE=CACHE_STORE, **settings)


def test_check_refuses_a_missing_cache_alias() -> None:
    assert errors(IDEMPOTENCY_CACHE="nowhere") == ["django_idempotency.E010"]


@pytest.mark.parametrize(
    "backend",
    [
        "django.core.cache.backends.locmem.LocMemCache",
        "django.core.cache.backends.dummy.DummyCache",
        "django.core.cache.backends.redis.RedisCache",
    ],
)
def test_check_refuses_a_cache_that_is_not_shared_django_redis(backend: str) -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "idem": {"BACKEND": backend, "LOCATION": "redis://127.0.0.1:6379/0"},
    }
    assert errors(CACHES=caches, IDEMPOTENCY_CACHE="idem") == ["django_idempotency.E012"]


def test_check_refuses_the_shard_client() -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "idem": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": ["redis://a", "redis://b"],
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"},
        },
    }
    assert errors(CACHES=caches, IDEMPOTENCY_CACHE="idem") == ["django_idempotency.E012"]


def test_check_accepts_django_redis() -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "idem": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
        },
    }
    assert errors(CACHES=caches, IDEMPOTENCY_CACHE="idem") == []


@pytest.mark.parametrize("lease", [0, -1, "soon", True])
def test_check_refuses_a_lease_that_is_not_a_positive_duration(lease: Any) -> None:
    assert errors(IDEMPOTENCY_LEASE=lease, IDEMPOTENCY_CACHE="nowhere") == [
        "django_idempotency.E010",
        "django_idempotency.E013",
    ]


class SubclassedRedisCache(RedisCache):
    """A project's own subclass of django-redis's cache, as E012 must accept."""


def test_check_accepts_a_subclass_of_django_redis() -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "idem": {
            "BACKEND": "tests.unit.stores.test_redis_store.SubclassedRedisCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
        },
    }
    assert errors(CACHES=caches, IDEMPOTENCY_CACHE="idem") == []


def test_the_hint_for_djangos_own_redis_cache_names_it() -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "idem": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
        },
    }
    with override_settings(IDEMPOTENCY_STORE=CACHE_STORE, CACHES=caches, IDEMPOTENCY_CACHE="idem"):
        (error,) = check_settings()
    assert error.id == "django_idempotency.E012"
    assert "Django's own RedisCache" in error.hint
    assert "LocMem" not in error.hint


def test_the_checks_are_the_stores_own() -> None:
    from django_idempotency.stores.redis import RedisStore

    with override_settings(IDEMPOTENCY_CACHE="nowhere"):
        assert [m.id for m in RedisStore.check()] == ["django_idempotency.E010"]


@pytest.mark.parametrize("replicas", [-1, "1", True, 1.5])
def test_check_refuses_a_min_replicas_that_is_not_a_count(replicas: Any) -> None:
    assert errors(IDEMPOTENCY_REDIS_MIN_REPLICAS=replicas) == ["django_idempotency.E041"]


@pytest.mark.parametrize("timeout", [0, -1, "1s", float("nan")])
def test_check_refuses_a_wait_timeout_that_is_not_a_positive_duration(timeout: Any) -> None:
    assert errors(IDEMPOTENCY_REDIS_WAIT_TIMEOUT=timeout) == ["django_idempotency.E042"]


@pytest.mark.parametrize("budget", [0, -1, "3s", float("inf"), True])
def test_check_refuses_a_timeout_budget_that_is_not_a_positive_duration(budget: Any) -> None:
    assert errors(IDEMPOTENCY_REDIS_TIMEOUT_BUDGET=budget) == ["django_idempotency.E045"]


def test_check_warns_of_a_timeout_budget_that_two_waits_would_spend() -> None:
    from django_idempotency.stores.redis import RedisStore

    cache = {"CACHES": CHECKED_CACHES, "IDEMPOTENCY_CACHE": "redis"}
    settings = {"IDEMPOTENCY_REDIS_WAIT_TIMEOUT": 1, "IDEMPOTENCY_REDIS_TIMEOUT_BUDGET": 1.5}
    with override_settings(IDEMPOTENCY_REDIS_MIN_REPLICAS=1, **settings, **cache):
        assert [m.id for m in RedisStore.check()] == ["django_idempotency.W045"]
    with override_settings(IDEMPOTENCY_REDIS_MIN_REPLICAS=0, **settings, **cache):
        assert RedisStore.check() == []
    with override_settings(
        IDEMPOTENCY_REDIS_MIN_REPLICAS=1, IDEMPOTENCY_REDIS_TIMEOUT_BUDGET=2, **cache
    ):
        assert RedisStore.check() == []


def test_check_refuses_min_replicas_on_the_cluster_client() -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "idem": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:7000/0",
            "OPTIONS": {"CLIENT_CLASS": CLUSTER_CLIENT},
        },
    }
    assert errors(CACHES=caches, IDEMPOTENCY_CACHE="idem") == []
    assert errors(CACHES=caches, IDEMPOTENCY_CACHE="idem", IDEMPOTENCY_REDIS_MIN_REPLICAS=1) == [
        "django_idempotency.E044"
    ]


def test_cluster_redirections_are_logged_as_a_configuration_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from redis.exceptions import MovedError

    from django_idempotency.stores.redis import RedisStore

    with caplog.at_level(logging.ERROR, logger="django_idempotency"):
        RedisStore._log_failure(MovedError("3999 127.0.0.1:6381"))
    (record,) = caplog.records
    assert "Redis Cluster configuration error (MovedError" in record.getMessage()
    assert CLUSTER_CLIENT in record.getMessage()
    assert record.exc_info is not None, "with its cause"


@pytest.mark.parametrize("value", ["false", "False", "true", "0", "", 1, 0, None])
def test_e020_fail_open_must_be_a_real_boolean(value: object) -> None:
    assert errors(IDEMPOTENCY_FAIL_OPEN=value) == ["django_idempotency.E020"]


@pytest.mark.parametrize("value", [True, False])
def test_fail_open_booleans_pass(value: bool) -> None:
    assert errors(IDEMPOTENCY_FAIL_OPEN=value) == []


@pytest.mark.parametrize("value", ["false", "true", 1, "yes"])
def test_a_fail_open_that_is_not_true_fails_closed(value: object) -> None:
    # Were the check silenced, the store still never opens on a string.
    with override_settings(IDEMPOTENCY_FAIL_OPEN=value):
        assert conf.IDEMPOTENCY_FAIL_OPEN is False


def test_check_ignores_the_cache_for_the_database_store() -> None:
    with override_settings(IDEMPOTENCY_STORE=DATABASE_STORE, IDEMPOTENCY_CACHE="nowhere"):
        assert check_settings() == []


# Leases, against the shared Redis.


def redis_only(test: Any) -> Any:
    """Run ``test`` on the Redis store only."""
    return pytest.mark.redis(pytest.mark.parametrize("store", ["redis"], indirect=True)(test))


def _claim_key() -> bytes:
    (name,) = list(redis_client().scan_iter(match=os.environ["REDIS_TEST_PREFIX"] + ":*"))
    return name  # type: ignore[no-any-return]


@redis_only
@pytest.mark.django_db(transaction=True)
def test_the_lease_is_renewed_while_a_long_view_runs(
    client_alice: APIClient, alice: User, store: StoreUnderTest, settings: Any
) -> None:
    settings.IDEMPOTENCY_LEASE = 0.3
    views.hold.clear()
    views.started.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post_as, alice, "/t/widgets", {"name": "long"}, "long")
        assert views.started.wait(10)
        time.sleep(1.0)  # over three leases: without renewal the claim would be gone
        assert redis_client().pttl(_claim_key()) > 0
        duplicate = pool.submit(post_as, alice, "/t/widgets", {"name": "long"}, "long").result(10)
        assert duplicate.status_code == 409
        assert envelope(duplicate)["type"] == "idempotency_key_in_use"
        views.hold.set()
        assert first.result(10).status_code == 201
    assert Widget.objects.count() == 1
    replay = post(client_alice, "/t/widgets", {"name": "long"}, key="long")
    assert replay["Idempotent-Replayed"] == "true"


def _gated(
    pool: ThreadPoolExecutor, user: User, name: str, key: str
) -> tuple[Any, threading.Event]:
    """A request whose view runs until its gate is set: its future, once the view started."""
    views.started.clear()
    views.gates[key] = gate = threading.Event()
    running = pool.submit(post_as, user, "/t/widgets", {"name": name}, key, HTTP_X_TEST_GATE=key)
    assert views.started.wait(10)
    return running, gate


@redis_only
@pytest.mark.django_db(transaction=True)
def test_a_request_that_lost_its_lease_cannot_overwrite_the_new_owner(
    client_alice: APIClient,
    alice: User,
    store: StoreUnderTest,
    caplog: pytest.LogCaptureFixture,
    settings: Any,
) -> None:
    settings.IDEMPOTENCY_LEASE = 600  # no renewal comes between the lapse and the retry
    with ThreadPoolExecutor(2) as pool:
        slow, gate = _gated(pool, alice, "slow", "lease")
        # The slow request's lease lapses (as when its worker stalls past it).
        name = _claim_key()
        redis_client().pexpire(name, 1)
        while redis_client().exists(name):
            time.sleep(0.005)
        # A retry takes the lapsed key over, runs and stores its response...
        newer_response = pool.submit(
            post_as, alice, "/t/widgets", {"name": "slow"}, "lease"
        ).result(10)
        assert "Idempotent-Replayed" not in newer_response
        # ...and then the slow request finishes.
        gate.set()
        slow_response = slow.result(10)
    assert slow_response.status_code == newer_response.status_code == 201
    assert slow_response.content != newer_response.content
    assert Widget.objects.count() == 2
    replay = post(client_alice, "/t/widgets", {"name": "slow"}, key="lease")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == newer_response.content, "the newer owner's response is kept"
    assert "lost its lease" in caplog.text


@redis_only
@pytest.mark.django_db(transaction=True)
def test_a_claim_past_its_time_budget_is_answered_503_with_retry_after(
    client_alice: APIClient, store: StoreUnderTest, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.IDEMPOTENCY_REDIS_TIMEOUT_BUDGET = 1e-9  # spent before the first call
    refused = post(client_alice, "/t/widgets", {"name": "late"}, key="late")
    assert refused.status_code == 503
    assert envelope(refused)["type"] == "idempotency_store_unavailable"
    assert refused["Retry-After"]
    assert "BudgetExceeded" in caplog.text
    assert Widget.objects.count() == 0, "the view did not run"
    settings.IDEMPOTENCY_REDIS_TIMEOUT_BUDGET = 3
    assert post(client_alice, "/t/widgets", {"name": "late"}, key="late").status_code == 201


def test_the_budget_ends_redis_pys_retries_instead_of_sleeping_past_it() -> None:
    from redis.backoff import ConstantBackoff

    from django_idempotency.stores.redis.scripts import BudgetBackoff, BudgetExceeded, within

    backoff = BudgetBackoff(ConstantBackoff(0.5))
    assert backoff.compute(1) == 0.5, "without a deadline, the backoff it wraps"
    with within(2):
        assert backoff.compute(3) == 0.5
    with within(0.4), pytest.raises(BudgetExceeded, match="after 4 failed attempts"):
        backoff.compute(4)


@redis_only
@pytest.mark.django_db(transaction=True)
def test_taking_over_a_lapsed_claim_is_logged_with_how_long_past_its_lease(
    alice: User, store: StoreUnderTest, caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    from django_idempotency.stores.redis.scripts import LAPSE_MEMORY_MS

    settings.IDEMPOTENCY_LEASE = 600
    with ThreadPoolExecutor(1) as pool:
        stalled, gate = _gated(pool, alice, "lapse", "lapse")
        # As when its worker died 2 s after the lease's last renewal would have lapsed.
        name = _claim_key()
        redis_client().pexpire(name, LAPSE_MEMORY_MS - 2000)
        with caplog.at_level(logging.WARNING, logger="django_idempotency.stores.redis"):
            retry = post_as(alice, "/t/widgets", {"name": "lapse"}, "lapse")
        gate.set()
        stalled.result(10)
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    (line,) = [r for r in caplog.records if "lapsed" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert name.decode() in line.getMessage(), "names the key (the scope's digest)"
    assert "POST /t/widgets" in line.getMessage()
    past = float(line.getMessage().split("lapsed ")[1].split(" s")[0])
    assert 2.0 <= past < 10, line.getMessage()


@redis_only
@pytest.mark.django_db(transaction=True)
def test_a_lapsed_claim_that_nobody_took_over_still_stores_its_response(
    client_alice: APIClient, alice: User, store: StoreUnderTest, settings: Any
) -> None:
    settings.IDEMPOTENCY_LEASE = 600
    with ThreadPoolExecutor(1) as pool:
        slow, gate = _gated(pool, alice, "slow", "lapsed")
        redis_client().delete(_claim_key())  # lapsed (or lost by a restarted Redis)
        gate.set()
        first = slow.result(10)
    assert first.status_code == 201
    replay = post(client_alice, "/t/widgets", {"name": "slow"}, key="lapsed")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert Widget.objects.count() == 1


@redis_only
@pytest.mark.django_db(transaction=True)
def test_renewal_takes_back_a_lapsed_claim_that_nobody_took_over(
    client_alice: APIClient, alice: User, store: StoreUnderTest, settings: Any
) -> None:
    settings.IDEMPOTENCY_LEASE = 0.3
    with ThreadPoolExecutor(2) as pool:
        slow, gate = _gated(pool, alice, "slow", "back")
        name = _claim_key()
        redis_client().delete(name)
        deadline = time.monotonic() + 10
        while not redis_client().exists(name):
            assert time.monotonic() < deadline, "the renewer did not take the claim back"
            time.sleep(0.01)
        duplicate = pool.submit(post_as, alice, "/t/widgets", {"name": "slow"}, "back").result(10)
        assert duplicate.status_code == 409
        gate.set()
        assert slow.result(10).status_code == 201
    assert Widget.objects.count() == 1


@redis_only
def test_a_released_claim_is_never_renewed_back(store: StoreUnderTest, settings: Any) -> None:
    """Renewal runs in its own thread; one racing a release must not re-claim the key."""
    from datetime import timedelta

    from django.utils import timezone

    from django_idempotency.stores.base import Claim, RequestRecord
    from django_idempotency.stores.redis import RedisStore

    settings.IDEMPOTENCY_LEASE = 0.003  # renew every millisecond: races are many
    cache_store, leaked = RedisStore(), 0
    for i in range(250):
        now = timezone.now()
        record = RequestRecord("race", f"k{i}", "fp", "POST", "/x", now, now + timedelta(hours=1))
        claim = cache_store.begin(record)
        assert isinstance(claim, Claim)
        time.sleep(0.0005 * (i % 4))
        cache_store.release(claim)
        time.sleep(0.001)  # room for a racing renewal to land
        found = cache_store.lookup("race", f"k{i}")
        leaked += found is not None and found.state != "released"
    assert leaked == 0


@redis_only
@pytest.mark.parametrize("atomic_requests", [True], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_with_atomic_requests_the_response_is_stored_only_once_committed(
    client_alice: APIClient, store: StoreUnderTest, settings: Any, atomic_requests: bool
) -> None:
    settings.IDEMPOTENCY_LEASE = 0.5
    post(client_alice, "/t/apiview", {"outcome": "ok"}, key="ok")
    replay = post(client_alice, "/t/apiview", {"outcome": "ok"}, key="ok")
    assert replay["Idempotent-Replayed"] == "true", "stored once the transaction committed"

    first = post(client_alice, "/t/apiview", {"outcome": "rollback"}, key="rb")
    assert first.status_code == 201
    assert Widget.objects.count() == 1, "only the first request's widget committed"
    assert "completed" not in [r.state for r in store.records() if r.key == "rb"]
    deadline = time.monotonic() + 10
    while True:  # the claim lapses with its lease
        retry = post(client_alice, "/t/apiview", {"outcome": "rollback"}, key="rb")
        if retry.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry, "never a replay of writes that rolled back"


@redis_only
@pytest.mark.parametrize("atomic_requests", [True], indirect=True)
@pytest.mark.django_db
def test_in_a_testcase_with_atomic_requests_capture_on_commit_stores_the_response(
    client_alice: APIClient,
    store: StoreUnderTest,
    atomic_requests: bool,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client_alice, "/t/apiview", {"outcome": "ok"}, key="tc")
    replay = post(client_alice, "/t/apiview", {"outcome": "ok"}, key="tc")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content


@redis_only
@pytest.mark.django_db(transaction=True)
def test_the_scripts_survive_a_connection_that_the_server_closed(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    """A pooled connection that Redis closed while it sat in the pool is
    replaced, and the claim, the completion and the replay go through."""
    import redis

    from django_idempotency.stores.redis import RedisStore

    client = RedisStore().client()
    # Another connection than the pool's (CLIENT KILL skips the caller's own).
    with redis.Redis.from_url(os.environ["REDIS_URL"]) as killer:
        # client_id() runs on the pool's idle connection, which the claim takes next.
        assert killer.client_kill_filter(_id=client.client_id()) == 1
        first = post(client_alice, "/t/widgets", {"name": "a"}, key="closed")
        assert first.status_code == 201
        assert killer.client_kill_filter(_id=client.client_id()) == 1
    replay = post(client_alice, "/t/widgets", {"name": "a"}, key="closed")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert Widget.objects.count() == 1
