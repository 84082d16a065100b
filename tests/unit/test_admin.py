"""The admin of stored records, through its own pages and the test client."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from django_idempotency import admin as record_admin
from django_idempotency.admin import is_masked, mask
from django_idempotency.models import IdempotencyRecord
from tests.helpers import make_record, post, staff
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db

LIST = "/admin/django_idempotency/idempotencyrecord/"


def detail(record: IdempotencyRecord) -> str:
    return f"{LIST}{record.pk}/change/"


def listed(response) -> list[str]:
    """The keys in the changelist, in order."""
    return [record.key for record in response.context["cl"].result_list]


@pytest.fixture
def records() -> dict[str, IdempotencyRecord]:
    return {
        "created": make_record("k-created", age=timedelta(hours=3)),
        "conflict": make_record("k-409", status=409, path="/t/orders", age=timedelta(hours=2)),
        "failed": make_record("k-500", status=503, age=timedelta(hours=1, minutes=30)),
        "in-flight": make_record("k-running", state="in_flight", age=timedelta(hours=1)),
        "expired": make_record(
            "k-old", age=timedelta(hours=30), expires_in=timedelta(hours=-6), path="/t/orders/1"
        ),
    }


def test_changelist_newest_first_with_every_column(admin_client: Client, records) -> None:
    response = admin_client.get(LIST)
    assert response.status_code == 200
    assert listed(response) == ["k-old", "k-running", "k-500", "k-409", "k-created"]
    html = response.content.decode()
    for text in ["user:1", "POST /t/widgets", "in flight", "completed", "409", "Expiry"]:
        assert text in html
    assert "idempotencyrecord/add/" not in html  # no "Add" button


@pytest.mark.parametrize(
    ("query", "keys"),
    [
        ("q=k-409", ["k-409"]),
        ("q=k-4", []),  # keys match exactly: the key index serves the search
        ("q=/t/orders", ["k-old", "k-409"]),
        ("q=/t/orders/", ["k-old"]),
        ("q=+k-running+", ["k-running"]),
        ("state__exact=in_flight", ["k-running"]),
        ("state__exact=completed", ["k-old", "k-500", "k-409", "k-created"]),
        ("status_class=2xx", ["k-old", "k-created"]),
        ("status_class=4xx", ["k-409"]),
        ("status_class=5xx", ["k-500"]),
        ("expired=yes", ["k-old"]),
        ("expired=no", ["k-running", "k-500", "k-409", "k-created"]),
        ("expired=no&status_class=2xx", ["k-created"]),
    ],
)
def test_search_and_filters(admin_client: Client, records, query: str, keys: list[str]) -> None:
    response = admin_client.get(f"{LIST}?{query}")
    assert response.status_code == 200
    assert listed(response) == keys


def test_date_drill_down(admin_client: Client, records) -> None:
    old = records["expired"].created_at
    response = admin_client.get(
        f"{LIST}?created_at__year={old.year}&created_at__month={old.month}&created_at__day={old.day}"
    )
    assert response.status_code == 200
    assert "k-old" in listed(response)


@pytest.mark.parametrize("kind", ["day", "month", "year"])
def test_drill_down_periods_match_djangos_without_scanning(kind: str) -> None:
    for hours in range(0, 84, 12):  # no gap holds a whole day
        make_record(f"k{hours}", age=timedelta(hours=hours))
    expected = list(IdempotencyRecord.objects.datetimes("created_at", kind))
    drill_down = record_admin.DrillDownQuerySet(IdempotencyRecord)
    with CaptureQueriesContext(connection) as queries:
        assert drill_down.datetimes("created_at", kind) == expected
    assert "DISTINCT" not in queries[0]["sql"]
    assert drill_down.none().datetimes("created_at", kind) == []


def test_only_indexed_columns_sort(admin_client: Client, records) -> None:
    response = admin_client.get(LIST)
    # The "created" and "expiry" columns sort by created_at and expires_at.
    assert set(response.context["cl"].sortable_by) == {"created", "expiry"}
    assert admin_client.get(f"{LIST}?o=6").status_code == 200


def test_detail_shows_the_stored_response_with_secrets_masked(admin_client: Client) -> None:
    body = {
        "id": "key_123",
        "name": "ci",
        "secret": "sk_live_TOPSECRET1",
        "owner": {"apiKey": "sk_live_TOPSECRET2", "password": ["TOPSECRET3"]},
        "items": [{"client_secret": "TOPSECRET4", "keyboard": "qwerty"}],
    }
    record = make_record(
        "create-key-1",
        path="/v1/api_keys",
        fingerprint="ab" * 32,
        headers=[
            ("Content-Type", "application/json"),
            ("Location", "/v1/api_keys/key_123"),
            ("X-Api-Key", "TOPSECRET5"),
        ],
        body=json.dumps(body).encode(),
    )
    response = admin_client.get(detail(record))
    assert response.status_code == 200
    html = response.content.decode()
    assert "ab" * 32 in html
    assert "POST /v1/api_keys" in html
    assert "/v1/api_keys/key_123" in html
    assert "&quot;keyboard&quot;: &quot;qwerty&quot;" in html  # pretty JSON, escaped
    assert "&quot;name&quot;: &quot;ci&quot;" in html
    assert "TOPSECRET" not in html
    assert html.count(record_admin.MASK) == 5
    # Read-only: no form fields, nothing to save.
    assert 'name="key"' not in html and "<textarea" not in html
    assert 'name="_save"' not in html


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "<script>alert(1)</script>"}',
        b"<script>alert(1)</script><img src=x onerror=alert(2)>",
    ],
)
def test_stored_bodies_cannot_inject_html(admin_client: Client, body: bytes) -> None:
    record = make_record(body=body, headers=[("Content-Type", "text/html")])
    html = admin_client.get(detail(record)).content.decode()
    assert "<script>alert(1)" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_binary_and_empty_bodies(admin_client: Client) -> None:
    png = make_record(
        "png", body=b"\x89PNG\r\n\x1a\n\x00\x00\xff", headers=[("Content-Type", "image/png")]
    )
    assert "11 bytes of image/png" in admin_client.get(detail(png)).content.decode()
    control = make_record("ctl", body=b"a\x00b", headers=[("Content-Type", "text/plain")])
    assert "3 bytes of text/plain" in admin_client.get(detail(control)).content.decode()
    empty = make_record("empty", status=204, body=b"", headers=[])
    html = admin_client.get(detail(empty)).content.decode()
    assert "<em>empty</em>" in html and "<em>none</em>" in html


def test_long_text_bodies_are_cut(admin_client: Client) -> None:
    record = make_record(body=b"x" * (record_admin.MAX_SHOWN_BYTES + 10))
    html = admin_client.get(detail(record)).content.decode()
    assert (
        f"(first {record_admin.MAX_SHOWN_BYTES} of {record_admin.MAX_SHOWN_BYTES + 10} bytes)"
        in html
    )


def test_nobody_adds_or_edits(admin_client: Client, records) -> None:
    assert admin_client.get(f"{LIST}add/").status_code == 403
    record = records["created"]
    response = admin_client.post(detail(record), {"key": "changed", "scope": "x"})
    assert response.status_code == 403
    record.refresh_from_db()
    assert record.key == "k-created"


def test_staff_with_delete_permission_deletes_a_record(records) -> None:
    client = staff("view", "delete")
    record = records["in-flight"]
    assert client.get(LIST).status_code == 200
    assert client.get(detail(record)).status_code == 200
    response = client.post(f"{LIST}{record.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not IdempotencyRecord.objects.filter(pk=record.pk).exists()


def test_staff_who_may_only_view_can_neither_delete_nor_expire(records) -> None:
    client = staff("view")
    record = records["created"]
    assert client.get(detail(record)).status_code == 200
    assert client.post(f"{LIST}{record.pk}/delete/", {"post": "yes"}).status_code == 403
    assert "expire_selected" not in client.get(LIST).content.decode()
    client.post(LIST, {"action": "expire_selected", "_selected_action": [record.pk]})
    record.refresh_from_db()
    assert not record.is_expired


def test_expire_action_makes_the_key_usable_at_once(alice: User) -> None:
    api = APIClient()
    api.force_authenticate(alice)
    assert post(api, "/t/widgets", {"name": "a"}, key="stuck").status_code == 201
    replay = post(api, "/t/widgets", {"name": "a"}, key="stuck")
    assert replay["Idempotent-Replayed"] == "true"
    record = IdempotencyRecord.objects.get(key="stuck")
    other = make_record("other")

    client = staff("view", "delete")
    response = client.post(
        LIST, {"action": "expire_selected", "_selected_action": [record.pk]}, follow=True
    )
    assert "Expired 1 key: a request with it now runs the view again." in response.content.decode()
    record.refresh_from_db()
    other.refresh_from_db()
    assert record.is_expired and not other.is_expired

    again = post(api, "/t/widgets", {"name": "a"}, key="stuck")
    assert again.status_code == 201 and "Idempotent-Replayed" not in again
    assert Widget.objects.count() == 2


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("secret", True),
        ("client_secret", True),
        ("api_key", True),
        ("apiKey", True),
        ("X-Api-Key", True),
        ("Authorization", True),
        ("Set-Cookie", True),
        ("access_token", True),
        ("PASSWORD", True),
        ("keyboard", False),
        ("key_id", False),
        ("token_type", False),
        ("name", False),
    ],
)
def test_which_names_are_masked(name: str, masked: bool) -> None:
    assert is_masked(name) is masked


def test_masked_fields_setting() -> None:
    with override_settings(IDEMPOTENCY_ADMIN_MASKED_FIELDS=["iban"]):
        assert mask({"account_iban": "DE00", "secret": "s", "n": [{"IBAN": 1}]}) == {
            "account_iban": record_admin.MASK,
            "secret": "s",
            "n": [{"IBAN": record_admin.MASK}],
        }


def test_large_unfiltered_list_uses_the_estimate(
    admin_client: Client, monkeypatch, records
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the estimate is PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {IdempotencyRecord._meta.db_table}")
    monkeypatch.setattr(record_admin, "ESTIMATE_ABOVE", 0)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(LIST)
    assert response.context["cl"].result_count == 5
    assert not [q for q in queries if "COUNT(" in q["sql"].upper()]
    # A filtered list counts exactly.
    assert admin_client.get(f"{LIST}?expired=yes").context["cl"].result_count == 1


# With DATABASE_ROUTERS set (tests/settings.py), makemigrations checks the
# migration history of every database the routers let it migrate.
@pytest.mark.django_db(databases=["default", "second"])
def test_no_missing_migrations() -> None:
    call_command("makemigrations", "django_idempotency", "--check", "--dry-run", verbosity=0)


# USE_TZ = False: the database gives naive datetimes, which the admin must show.


@pytest.mark.parametrize("kind", ["day", "month", "year"])
def test_drill_down_periods_without_time_zones(kind: str) -> None:
    with override_settings(USE_TZ=False):
        for hours in range(0, 84, 12):
            make_record(f"k{hours}", age=timedelta(hours=hours))
        expected = list(IdempotencyRecord.objects.datetimes("created_at", kind))
        drill_down = record_admin.DrillDownQuerySet(IdempotencyRecord)
        assert drill_down.datetimes("created_at", kind) == expected
        assert all(moment.tzinfo is None for moment in expected)


def test_list_drill_down_and_detail_without_time_zones(admin_client: Client) -> None:
    with override_settings(USE_TZ=False):
        old = make_record("k-old", age=timedelta(hours=30), expires_in=timedelta(hours=-6))
        make_record("k-new")
        response = admin_client.get(LIST)
        assert response.status_code == 200
        assert listed(response) == ["k-new", "k-old"]
        day = f"created_at__year={old.created_at.year}&created_at__month={old.created_at.month}"
        assert admin_client.get(f"{LIST}?{day}").status_code == 200
        assert admin_client.get(f"{LIST}?expired=yes").status_code == 200
        detail_page = admin_client.get(detail(old))
        assert detail_page.status_code == 200
        assert b"k-old" in detail_page.content
