"""``manage.py purge_idempotency_keys``: what goes, what stays, and purges at once."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from django_idempotency.keys import scoped_key
from django_idempotency.management.commands.purge_idempotency_keys import parse_duration
from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores.base import Store
from tests.helpers import make_record, post_as
from tests.testapp import views

EXPIRED = {"age": timedelta(hours=25), "expires_in": timedelta(hours=-1)}


class SelfExpiringStore(Store):
    """Stands in for a store whose backend expires keys (like Redis)."""

    needs_purge = False

    def begin(self, record):  # pragma: no cover - never called
        raise NotImplementedError

    def finish(self, claim, response):  # pragma: no cover
        raise NotImplementedError

    def release(self, claim, exc=None):  # pragma: no cover
        raise NotImplementedError


def purge(*args: str, verbosity: int = 1) -> str:
    out = StringIO()
    call_command("purge_idempotency_keys", *args, verbosity=verbosity, stdout=out, stderr=out)
    return out.getvalue()


def keys() -> set[str]:
    return set(IdempotencyRecord.objects.values_list("key", flat=True))


@pytest.mark.django_db
def test_only_expired_records_go() -> None:
    make_record("expired-completed", **EXPIRED)
    make_record("expired-in-flight", state="in_flight", **EXPIRED)
    make_record("just-expired", expires_in=timedelta(seconds=-1))
    make_record("valid")
    make_record("valid-in-flight", state="in_flight")
    # Created long ago with its own long TTL (@idempotent(ttl=...)): still valid.
    make_record("old-but-valid", age=timedelta(days=30), expires_in=timedelta(days=1))

    assert purge() == "Deleted 3 expired idempotency record(s).\n"
    assert keys() == {"valid", "valid-in-flight", "old-but-valid"}
    assert purge() == "Deleted 0 expired idempotency record(s).\n"


@pytest.mark.django_db
def test_dry_run_counts_and_deletes_nothing() -> None:
    for i in range(3):
        make_record(f"e{i}", **EXPIRED)
    make_record("valid")

    assert purge("--dry-run") == "Would delete 3 expired idempotency record(s).\n"
    assert IdempotencyRecord.objects.count() == 4


@pytest.mark.django_db
def test_batches_and_verbosity() -> None:
    for i in range(5):
        make_record(f"e{i}", **EXPIRED)
    make_record("valid")

    assert purge("--batch-size", "2", verbosity=2).splitlines() == [
        "Batch 1: deleted 2 (2 so far).",
        "Batch 2: deleted 2 (4 so far).",
        "Batch 3: deleted 1 (5 so far).",
        "Deleted 5 expired idempotency record(s).",
    ]
    assert keys() == {"valid"}
    make_record("e", **EXPIRED)
    assert purge(verbosity=0) == ""
    assert keys() == {"valid"}


@pytest.mark.django_db
def test_older_than_keeps_recently_created_expired_records() -> None:
    make_record("expired-3-days-ago", age=timedelta(days=4), expires_in=timedelta(days=-3))
    make_record("expired-recently", **EXPIRED)
    make_record("valid-but-created-long-ago", age=timedelta(days=10), expires_in=timedelta(days=1))

    assert purge("--older-than", "2d", "--dry-run") == (
        "Would delete 1 expired idempotency record(s).\n"
    )
    assert purge("--older-than", "48h") == "Deleted 1 expired idempotency record(s).\n"
    assert keys() == {"expired-recently", "valid-but-created-long-ago"}


@pytest.mark.django_db
def test_older_than_shorter_than_the_ttl_still_spares_valid_records() -> None:
    make_record("valid", age=timedelta(hours=2))
    out = purge("--older-than", "30m")
    assert "shorter than IDEMPOTENCY_TTL" in out
    assert out.endswith("Deleted 0 expired idempotency record(s).\n")
    assert keys() == {"valid"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1.5", 1.5),
        ("30s", 30),
        ("30m", 1800),
        ("48h", 172800),
        ("7d", 604800),
        ("2w", 1209600),
        (" 12H ", 43200),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "2 days"], "--older-than: '2 days' is not a duration"),
        (["--older-than=-1h"], "--older-than: '-1h' is not a duration"),
        (["--batch-size", "0"], "--batch-size: must be a positive whole number, not '0'"),
        (["--batch-size", "many"], "--batch-size: must be a positive whole number"),
    ],
)
def test_bad_options_are_clear_errors(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        purge(*args)


@pytest.mark.django_db
def test_a_store_that_expires_keys_itself_has_nothing_to_purge() -> None:
    make_record("e", **EXPIRED)
    path = f"{__name__}.SelfExpiringStore"
    with override_settings(IDEMPOTENCY_STORE=path):
        assert purge() == (
            "SelfExpiringStore expires idempotency keys by itself; there is nothing to purge.\n"
        )
        assert purge("--dry-run", verbosity=0) == ""
    assert keys() == {"e"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_purges_delete_each_row_once_and_the_counts_add_up() -> None:
    expired, valid, purges = 1200, 30, 4
    now = timezone.now()
    IdempotencyRecord.objects.bulk_create(
        IdempotencyRecord(
            scope="s",
            key=f"e{i}",
            digest=scoped_key("s", f"e{i}"),
            fingerprint="f",
            method="POST",
            path="/p",
            state="completed",
            created_at=now - timedelta(hours=25),
            expires_at=now - timedelta(hours=1),
        )
        for i in range(expired)
    )
    for i in range(valid):
        make_record(f"v{i}")
    barrier = threading.Barrier(purges)

    def one(_: int) -> int:
        try:
            barrier.wait()
            out = purge("--batch-size", "50", verbosity=2)
        finally:
            connections.close_all()
        return int(re.search(r"Deleted (\d+) ", out).group(1))

    with ThreadPoolExecutor(purges) as pool:
        counts = list(pool.map(one, range(purges)))

    assert sum(counts) == expired, counts
    assert keys() == {f"v{i}" for i in range(valid)}


@pytest.mark.django_db(transaction=True)
def test_a_request_in_flight_survives_a_purge(alice: User) -> None:
    if connection.vendor == "postgresql":
        # PostgreSQL purges around the open claim; SQLite's single writer
        # would make the purge wait for the request to finish.
        for i in range(20):
            make_record(f"e{i}", **EXPIRED)
    views.hold.clear()
    views.started.clear()

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post_as, alice, "/t/widgets", {"name": "w"}, key="in-flight")
        assert views.started.wait(10)
        out = purge()
        views.hold.set()
        assert running.result(timeout=10).status_code == 201

    expected = 20 if connection.vendor == "postgresql" else 0
    assert out == f"Deleted {expected} expired idempotency record(s).\n"
    assert IdempotencyRecord.objects.get().state == "completed"


class OwnPurgeStore(SelfExpiringStore):
    """A third-party store that keeps records and purges them its own way."""

    needs_purge = True
    calls: list[dict] = []

    def purge_expired(self, **options):
        self.calls.append(options)
        if options.get("dry_run"):
            return 7
        for deleted in (3, 4):
            options["on_batch"](deleted)
        return 7


@pytest.mark.django_db
def test_the_command_leaves_the_purge_to_the_store() -> None:
    make_record("e", **EXPIRED)
    OwnPurgeStore.calls.clear()
    with override_settings(IDEMPOTENCY_STORE=f"{__name__}.OwnPurgeStore"):
        assert purge("--dry-run") == "Would delete 7 expired idempotency record(s).\n"
        assert purge("--batch-size", "3", "--older-than", "2d", verbosity=2).splitlines() == [
            "Batch 1: deleted 3 (3 so far).",
            "Batch 2: deleted 4 (7 so far).",
            "Deleted 7 expired idempotency record(s).",
        ]
    assert keys() == {"e"}  # the command itself deleted nothing
    dry, real = OwnPurgeStore.calls
    assert dry["dry_run"] is True
    assert real["batch_size"] == 3
    assert real["now"] - real["created_before"] == timedelta(days=2)


@pytest.mark.django_db
def test_a_store_that_keeps_records_must_say_how_to_purge_them() -> None:
    class Forgetful(OwnPurgeStore):
        purge_expired = Store.purge_expired

    with pytest.raises(NotImplementedError, match="Forgetful keeps expired records"):
        Forgetful().purge_expired(now=timezone.now())


@pytest.mark.django_db
def test_the_database_store_purges_through_its_own_method() -> None:
    from django_idempotency.stores.database import DatabaseStore

    for i in range(3):
        make_record(f"e{i}", **EXPIRED)
    make_record("valid")
    store, now = DatabaseStore(), timezone.now()
    assert store.purge_expired(now=now, dry_run=True) == 3
    batches: list[int] = []
    assert store.purge_expired(now=now, batch_size=2, on_batch=batches.append) == 3
    assert batches == [2, 1]
    assert keys() == {"valid"}
    make_record("e", **EXPIRED)
    assert store.purge_expired() == 1  # now, by default
