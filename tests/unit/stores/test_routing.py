"""The store, the admin and guarded views under Django's database routers.

Real second databases, on whichever database the suite runs on: "second" is a
database of its own, "standby" a read-only connection to the test database (a
replica without lag; tests/integration/test_scale.py uses a real streaming one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import User
from django.core import checks
from django.db import DatabaseError, connections
from django.db.backends.signals import connection_created
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from django_idempotency.checks import check_settings
from django_idempotency.conf import store_database
from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores.database import DatabaseStore
from django_idempotency.stores.database.checks import check_database
from django_idempotency.stores.database.routers import guarded, in_guarded_view
from tests.helpers import check_ids, make_record, post
from tests.testapp.models import Widget

TWO = ["default", "second"]
ELSEWHERE = ["tests.routers.RecordsElsewhereRouter"]
LIST = "/admin/django_idempotency/idempotencyrecord/"


# The store's database follows the routers.


@pytest.mark.django_db(databases=TWO)
def test_without_routers_the_store_uses_default() -> None:
    assert store_database() == "default"


@pytest.mark.django_db(databases=TWO)
def test_the_store_writes_and_replays_where_the_routers_send_its_records(
    settings: Any, alice: User
) -> None:
    settings.DATABASE_ROUTERS = ELSEWHERE
    client = APIClient()
    client.force_authenticate(alice)
    created = post(client, "/t/widgets", {"name": "a"})
    assert created.status_code == 201
    assert IdempotencyRecord.objects.using("second").get().state == "completed"
    assert not IdempotencyRecord.objects.using("default").exists()

    replay = post(client, "/t/widgets", {"name": "a"})
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == created.content
    assert Widget.objects.count() == 1


@pytest.mark.django_db(databases=TWO)
def test_idempotency_database_overrides_the_routers(settings: Any) -> None:
    settings.DATABASE_ROUTERS = ELSEWHERE
    settings.IDEMPOTENCY_DATABASE = "default"
    assert store_database() == "default"


@pytest.mark.usefixtures("database_store")
def test_the_routing_checks_pass_by_default_and_with_a_router(settings: Any) -> None:
    assert check_ids(DatabaseStore.check()) == []
    settings.DATABASE_ROUTERS = ELSEWHERE
    assert check_ids(DatabaseStore.check()) == []


@pytest.mark.usefixtures("database_store")
def test_w030_the_setting_and_the_routers_disagree(settings: Any) -> None:
    settings.DATABASE_ROUTERS = ELSEWHERE
    settings.IDEMPOTENCY_DATABASE = "default"
    assert check_ids(DatabaseStore.check()) == [
        "django_idempotency.W030",
        "django_idempotency.W031",  # and the router keeps the table out of "default"
    ]


@pytest.mark.usefixtures("database_store")
def test_w031_the_routers_never_migrate_the_records_there(settings: Any) -> None:
    settings.DATABASE_ROUTERS = ["tests.routers.RecordsNowhereRouter"]
    assert check_ids(DatabaseStore.check()) == ["django_idempotency.W031"]


def test_the_routing_checks_leave_other_stores_alone(settings: Any) -> None:
    settings.IDEMPOTENCY_STORE = "tests.unit.test_checks.OtherStore"
    settings.DATABASE_ROUTERS = ["tests.routers.RecordsNowhereRouter"]
    assert not [i for i in check_ids(check_settings()) if i.startswith("django_idempotency.W03")]
    assert check_ids(check_database(databases=TWO)) == []


@pytest.mark.usefixtures("database_store")
@pytest.mark.django_db(databases=TWO)
def test_w032_no_table_in_the_store_database(settings: Any) -> None:
    settings.DATABASE_ROUTERS = ELSEWHERE
    assert check_ids(check_database(databases=TWO)) == []
    second = connections["second"]
    table = IdempotencyRecord._meta.db_table
    with second.cursor() as cursor:  # undone with the test's transaction
        if second.vendor == "mysql":  # except on MySQL and MariaDB, where DDL commits
            cursor.execute(f"SHOW CREATE TABLE {table}")
            create = cursor.fetchone()[1]
        cursor.execute(f"DROP TABLE {table}")
    try:
        assert check_ids(check_database(databases=TWO)) == ["django_idempotency.W032"]
        # Only when asked about that database: `manage.py check` alone does not ask.
        assert check_ids(check_database(databases=["default"])) == []
        assert check_ids(check_database(databases=None)) == []
        if second.vendor != "mysql":  # a DELETE after committed DDL would stay
            # Nor before the migration that creates the table has run there:
            # the check runs at the start of that very `migrate`.
            with second.cursor() as cursor:
                cursor.execute("DELETE FROM django_migrations WHERE app = 'django_idempotency'")
            assert check_ids(check_database(databases=TWO)) == []
    finally:
        if second.vendor == "mysql":
            with second.cursor() as cursor:
                cursor.execute(create)


@pytest.mark.usefixtures("database_store")
@pytest.mark.django_db(databases=TWO)
def test_the_checks_without_database_tag_send_no_query(settings: Any) -> None:
    settings.DATABASE_ROUTERS = ELSEWHERE
    # Ours only: Django 6's own model checks ask each database about JSON support.
    ours = [
        check
        for check in checks.registry.registry.get_checks()
        if check.__module__.startswith("django_idempotency")
    ]
    assert ours
    with CaptureQueriesContext(connections["second"]) as queries:
        for check in ours:
            check(app_configs=None)
    assert not queries.captured_queries


@pytest.mark.usefixtures("database_store")
@pytest.mark.django_db(databases=TWO)
def test_w032_says_nothing_when_the_database_cannot_be_reached(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseError("connection refused")

    settings.DATABASE_ROUTERS = ELSEWHERE
    monkeypatch.setattr(connections["second"].introspection, "table_names", unreachable)
    assert check_ids(check_database(databases=TWO)) == []


# The admin writes where the routers write, whatever it read from.


@pytest.fixture
def read_only_standby(settings: Any) -> Iterator[None]:
    """ "standby" refuses writes, as a hot standby does; the router reads from it."""

    def read_only(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias != "standby":
            return
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET default_transaction_read_only = on")
            elif connection.vendor == "mysql":
                cursor.execute("SET SESSION TRANSACTION READ ONLY")
            else:
                cursor.execute("PRAGMA query_only = ON")

    connections["standby"].close()
    connection_created.connect(read_only)
    settings.DATABASE_ROUTERS = ["tests.routers.PrimaryStandbyRouter"]
    try:
        yield
    finally:
        connection_created.disconnect(read_only)
        connections["standby"].close()


@pytest.mark.django_db(transaction=True, databases=["default", "standby"])
def test_the_standby_refuses_writes(read_only_standby: None) -> None:
    make_record("k1")
    assert IdempotencyRecord.objects.using("standby").count() == 1
    with pytest.raises(DatabaseError):
        IdempotencyRecord.objects.using("standby").update(key="k2")


@pytest.mark.django_db(transaction=True, databases=["default", "standby"])
def test_admin_expire_action_writes_to_the_primary(read_only_standby: None) -> None:
    records = [make_record(f"k{n}") for n in range(3)]
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="x"))
    response = client.post(
        LIST,
        {"action": "expire_selected", "_selected_action": [r.pk for r in records[:2]]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Expired 2 keys" in response.content.decode()
    now = timezone.now()
    expired = IdempotencyRecord.objects.using("default").filter(expires_at__lte=now)
    assert sorted(r.key for r in expired) == ["k0", "k1"]


@pytest.mark.django_db(transaction=True, databases=["default", "standby"])
def test_admin_delete_selected_and_delete_one_write_to_the_primary(
    read_only_standby: None,
) -> None:
    records = [make_record(f"k{n}") for n in range(3)]
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="x"))
    response = client.post(
        LIST,
        {"action": "delete_selected", "_selected_action": [records[0].pk], "post": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    response = client.post(f"{LIST}{records[1].pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert list(IdempotencyRecord.objects.using("default").values_list("key", flat=True)) == ["k2"]


@pytest.mark.django_db(databases=TWO)
def test_admin_deletes_what_the_primary_has_whatever_the_replica_lags(
    lagging_replica: None,
) -> None:
    records = [make_record(f"k{n}") for n in range(3)]  # on the primary only
    assert not IdempotencyRecord.objects.exists()  # the replica has not seen them
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="x"))
    selected = {"action": "delete_selected", "_selected_action": [records[0].pk]}
    confirm = client.post(LIST, selected)
    assert confirm.status_code == 200
    assert "k0" in confirm.content.decode()  # the confirmation lists it
    response = client.post(LIST, {**selected, "post": "yes"}, follow=True)
    assert "Successfully deleted 1" in response.content.decode()
    one = f"{LIST}{records[1].pk}/delete/"
    assert "k1" in client.get(one).content.decode()
    response = client.post(one, {"post": "yes"}, follow=True)
    assert "was deleted successfully" in response.content.decode()
    assert list(IdempotencyRecord.objects.using("default").values_list("key", flat=True)) == ["k2"]


# Guarded views read from the primary.


@pytest.fixture
def lagging_replica(settings: Any) -> None:
    """Reads go to "second", which never sees the primary's writes."""
    settings.DATABASE_ROUTERS = [
        "django_idempotency.stores.database.routers.GuardedReadsRouter",
        "tests.routers.LaggingReplicaRouter",
    ]


@pytest.mark.django_db(databases=TWO)
def test_a_guarded_view_reads_the_primary_and_stores_what_it_said(
    lagging_replica: None, client_alice: APIClient
) -> None:
    widget = Widget.objects.create(name="new")  # on the primary only
    # Unguarded reads go to the replica, which has not seen the row.
    assert client_alice.get(f"/t/widgets/{widget.pk}").status_code == 404

    renamed = post(client_alice, f"/t/widgets/{widget.pk}/rename", {"name": "renamed"})
    assert renamed.status_code == 200, renamed.content
    assert renamed.json() == {"id": widget.pk, "name": "renamed"}
    replay = post(client_alice, f"/t/widgets/{widget.pk}/rename", {"name": "renamed"})
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == {"id": widget.pk, "name": "renamed"}
    assert Widget.objects.using("default").get(pk=widget.pk).name == "renamed"


@pytest.mark.django_db(databases=TWO)
@pytest.mark.parametrize("path", ["/count", "/async-count"])
def test_a_guarded_views_reads_are_pinned_sync_and_async(
    lagging_replica: None, alice: User, settings: Any, path: str
) -> None:
    settings.ROOT_URLCONF = __name__
    client = Client()
    client.force_login(alice)
    Widget.objects.create(name="new")
    assert client.get(path).json() == {"count": 0, "guarded": False}  # the replica
    assert client.post(path, HTTP_IDEMPOTENCY_KEY="k1").json() == {"count": 1, "guarded": True}
    replay = client.post(path, HTTP_IDEMPOTENCY_KEY="k1")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == {"count": 1, "guarded": True}


@pytest.mark.django_db(databases=TWO)
def test_without_the_router_the_replicas_answer_is_stored(settings: Any, alice: User) -> None:
    # What GuardedReadsRouter prevents: the replica's stale answer, kept for a day.
    settings.DATABASE_ROUTERS = ["tests.routers.LaggingReplicaRouter"]
    settings.ROOT_URLCONF = __name__
    client = Client()
    client.force_login(alice)
    Widget.objects.create(name="new")
    assert client.post("/count", HTTP_IDEMPOTENCY_KEY="k1").json()["count"] == 0
    replay = client.post("/count", HTTP_IDEMPOTENCY_KEY="k1")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json()["count"] == 0


def test_the_guard_is_per_context_and_follows_sync_to_async() -> None:
    assert not in_guarded_view()
    with guarded():
        assert in_guarded_view()
        assert async_to_sync(sync_to_async(in_guarded_view))()
    assert not in_guarded_view()


def _count(request: Any) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"count": Widget.objects.count(), "guarded": in_guarded_view()})


async def _async_count(request: Any) -> Any:
    from django.http import JsonResponse

    count = await Widget.objects.acount()
    return JsonResponse({"count": count, "guarded": in_guarded_view()})


def _urls() -> list[Any]:
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    from django_idempotency import idempotent

    return [
        path("count", csrf_exempt(idempotent(required=False)(_count))),
        path("async-count", idempotent(required=False)(_async_count)),
    ]


urlpatterns = _urls()
