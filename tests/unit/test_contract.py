"""The contract (docs/howitworks.rst), through DRF's test client.

Every test runs on each store (the ``store`` fixture): the database store, and
the Redis store against the real Redis of ``REDIS_URL``.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord
from tests.helpers import StoreUnderTest, envelope, post
from tests.testapp.models import Widget

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store")]

REQUEST_ID = re.compile(r"^req_[0-9A-HJKMNP-TV-Z]{26}$")


def test_new_key_runs_view_once_and_stores_response(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    response = post(client_alice, "/t/widgets", {"name": "a"})
    assert response.status_code == 201
    assert Widget.objects.filter(name="a").count() == 1
    (record,) = store.records()
    assert (record.key, record.scope, record.state) == (
        "k1",
        f"user:{response.wsgi_request.user.pk}",
        "completed",
    )
    assert record.status == 201
    assert record.body == response.content
    assert REQUEST_ID.match(response["Request-Id"])
    assert "Idempotent-Replayed" not in response


def test_retry_replays_status_body_and_headers_without_running(client_alice: APIClient) -> None:
    first = post(client_alice, "/t/widgets", {"name": "a"})
    second = post(client_alice, "/t/widgets", {"name": "a"})
    assert Widget.objects.count() == 1
    assert second.status_code == first.status_code == 201
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true"
    for header in ("Content-Type", "Location", "X-Widget"):
        assert second[header] == first[header]
    assert second["Request-Id"] != first["Request-Id"]


def test_json_bodies_compare_canonically(client_alice: APIClient) -> None:
    first = client_alice.post(
        "/t/widgets",
        b'{"name": "a", "owner": "x"}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    second = client_alice.post(
        "/t/widgets",
        b'{"owner":"x","name":"a"}\n',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content


def test_changed_body_conflicts_with_exact_envelope(client_alice: APIClient) -> None:
    post(client_alice, "/t/widgets", {"name": "a"})
    response = post(client_alice, "/t/widgets", {"name": "b"})
    assert response.status_code == 409
    error = envelope(response, error_type="idempotency_conflict")
    assert error["message"] == "A different request was already made with this idempotency key"
    assert Widget.objects.count() == 1


@pytest.mark.parametrize("other", ["/t/apiview", "/t/widgets?dry=1", "/t/function"])
def test_same_key_on_another_endpoint_or_query_conflicts(
    client_alice: APIClient, other: str
) -> None:
    post(client_alice, "/t/widgets", {"name": "a"})
    response = post(client_alice, other, {"name": "a"})
    assert response.status_code == 409
    envelope(response, error_type="idempotency_conflict")


def test_missing_key_is_400(client_alice: APIClient) -> None:
    response = post(client_alice, "/t/widgets", {"name": "a"}, key=None)
    assert response.status_code == 400
    error = envelope(response, error_type="idempotency_key_missing")
    assert "Idempotency-Key" in error["message"]
    assert Widget.objects.count() == 0


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "a" * 256,
        "bad\x01key",
        "tab\tkey",
        "k1, k2",
        '"k1", "k2"',
        "caf\xc3\xa9",
        '"unterminated',
        '"bad\\escape"',
        '"x" y',
    ],
    ids=[
        "empty",
        "blank",
        "too-long",
        "control",
        "tab",
        "two-bare",
        "two-quoted",
        "non-ascii",
        "unterminated",
        "bad-escape",
        "trailing",
    ],
)
def test_malformed_keys_are_400(client_alice: APIClient, raw: str, store: StoreUnderTest) -> None:
    response = post(client_alice, "/t/widgets", {"name": "a"}, key=raw)
    assert response.status_code == 400, raw
    envelope(response, error_type="idempotency_key_invalid")
    assert store.records() == []
    assert Widget.objects.count() == 0


def test_longest_key_is_accepted(client_alice: APIClient) -> None:
    assert post(client_alice, "/t/widgets", {"name": "a"}, key="k" * 255).status_code == 201


def test_quoted_key_is_the_same_key_as_bare(client_alice: APIClient, store: StoreUnderTest) -> None:
    post(client_alice, "/t/widgets", {"name": "a"}, key="job-create-order-1234")
    response = post(client_alice, "/t/widgets", {"name": "a"}, key='"job-create-order-1234"')
    assert response["Idempotent-Replayed"] == "true"
    assert [r.key for r in store.records()] == ["job-create-order-1234"]


def test_quoted_key_may_hold_escapes_and_commas(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    post(client_alice, "/t/widgets", {"name": "a"}, key='"a,\\"b\\"\\\\"')
    assert [r.key for r in store.records()] == ['a,"b"\\']


@pytest.mark.parametrize("method", ["get", "patch", "put", "delete", "head", "options"])
def test_other_methods_pass_through_without_key(
    client_alice: APIClient, method: str, store: StoreUnderTest
) -> None:
    widget = Widget.objects.create(name="w")
    response = getattr(client_alice, method)(
        f"/t/widgets/{widget.pk}", {"name": "v"}, format="json"
    )
    assert response.status_code < 400
    assert store.records() == []


def test_users_never_see_each_others_responses(
    client_alice: APIClient, client_bob: APIClient
) -> None:
    a = post(client_alice, "/t/widgets", {"name": "same"}, key="shared")
    b = post(client_bob, "/t/widgets", {"name": "same"}, key="shared")
    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b
    assert a.json()["id"] != b.json()["id"]
    assert a.json()["key"] != b.json()["key"]
    assert Widget.objects.count() == 2
    # and each replays its own
    assert post(client_bob, "/t/widgets", {"name": "same"}, key="shared").content == b.content
    assert post(client_alice, "/t/widgets", {"name": "same"}, key="shared").content == a.content
    # a different body from bob conflicts only with bob's own record
    assert post(client_bob, "/t/widgets", {"name": "other"}, key="shared").status_code == 409


def test_anonymous_caller_gets_403_scope_unavailable(db: None) -> None:
    response = APIClient().post("/t/plain", {}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 403
    envelope(response, error_type="idempotency_scope_unavailable")
    assert Widget.objects.count() == 0


def test_exception_releases_key_and_rolls_back_view_writes(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    client_alice.raise_request_exception = True
    with pytest.raises(RuntimeError):
        post(client_alice, "/t/apiview", {"outcome": "raise"})
    assert Widget.objects.count() == (0 if store.rolls_back_view_writes else 1)
    assert store.records() == []
    with pytest.raises(RuntimeError):
        post(client_alice, "/t/apiview", {"outcome": "raise"})


def test_drf_exception_releases_key(client_alice: APIClient, store: StoreUnderTest) -> None:
    first = post(client_alice, "/t/apiview", {"outcome": "invalid"})
    assert first.status_code == 400
    assert store.records() == []
    assert post(client_alice, "/t/apiview", {"outcome": "invalid"}).status_code == 400
    assert "Idempotent-Replayed" not in first


@pytest.mark.parametrize("outcome", ["500", "503", "400", "422"])
def test_released_statuses_run_again_and_keep_no_writes(
    client_alice: APIClient, outcome: str, store: StoreUnderTest
) -> None:
    first = post(client_alice, "/t/apiview", {"outcome": outcome})
    assert first.status_code == int(outcome)
    if store.rolls_back_view_writes:
        assert Widget.objects.count() == 0, "the view's writes go with the released claim"
    assert store.records() == []
    second = post(client_alice, "/t/apiview", {"outcome": outcome})
    assert "Idempotent-Replayed" not in second


@pytest.mark.parametrize("outcome", ["404", "409"])
def test_definitive_4xx_is_stored(client_alice: APIClient, outcome: str) -> None:
    first = post(client_alice, "/t/apiview", {"outcome": outcome})
    second = post(client_alice, "/t/apiview", {"outcome": outcome})
    assert second.status_code == first.status_code == int(outcome)
    assert second["Idempotent-Replayed"] == "true"
    assert Widget.objects.count() == 1


@override_settings(IDEMPOTENCY_RELEASED_STATUSES={404})
def test_released_statuses_are_a_setting(client_alice: APIClient, store: StoreUnderTest) -> None:
    post(client_alice, "/t/apiview", {"outcome": "404"})
    assert store.records() == []
    post(client_alice, "/t/apiview", {"outcome": "400"}, key="k2")
    assert [r.status for r in store.records()] == [400]


def test_cookies_are_not_replayed(client_alice: APIClient, store: StoreUnderTest) -> None:
    first = post(client_alice, "/t/apiview", {"outcome": "ok"})
    assert "session-ish" in first.cookies
    second = post(client_alice, "/t/apiview", {"outcome": "ok"})
    assert second["Idempotent-Replayed"] == "true"
    assert "session-ish" not in second.cookies
    (record,) = store.records()
    assert "set-cookie" not in {name.lower() for name, _ in record.headers}


def test_optional_key_runs_unguarded_without_header(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    post(client_alice, "/t/apiview", {"outcome": "ok"}, key=None)
    post(client_alice, "/t/apiview", {"outcome": "ok"}, key=None)
    assert Widget.objects.count() == 2
    assert store.records() == []


def test_expired_record_is_ignored_before_any_purge(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    first = post(client_alice, "/t/widgets", {"name": "a"})
    store.expire_all()
    second = post(client_alice, "/t/widgets", {"name": "b"})
    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert second.json()["id"] != first.json()["id"]
    (record,) = store.records()
    assert record.ttl > timedelta(hours=23)
    assert post(client_alice, "/t/widgets", {"name": "b"})["Idempotent-Replayed"] == "true"


@override_settings(IDEMPOTENCY_TTL=timedelta(minutes=5))
def test_ttl_is_a_setting(client_alice: APIClient, store: StoreUnderTest) -> None:
    post(client_alice, "/t/widgets", {"name": "a"})
    (record,) = store.records()
    assert timedelta(minutes=4) < record.ttl <= timedelta(minutes=5)


@override_settings(IDEMPOTENCY_HEADER="X-Request-Key")
def test_header_name_is_a_setting(client_alice: APIClient) -> None:
    assert post(client_alice, "/t/widgets", {"name": "a"}).status_code == 400
    response = client_alice.post("/t/widgets", {"name": "a"}, format="json", HTTP_X_REQUEST_KEY="z")
    assert response.status_code == 201


@override_settings(IDEMPOTENCY_SCOPE=lambda request: "tenant-1")
def test_scope_function_is_a_setting(
    client_alice: APIClient, client_bob: APIClient, store: StoreUnderTest
) -> None:
    post(client_alice, "/t/widgets", {"name": "a"})
    assert post(client_bob, "/t/widgets", {"name": "a"})["Idempotent-Replayed"] == "true"
    assert [r.scope for r in store.records()] == ["tenant-1"]


def test_scoped_key_is_stable_and_passed_to_view(client_alice: APIClient) -> None:
    first = post(client_alice, "/t/widgets", {"name": "a"}).json()["key"]
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert post(client_alice, "/t/widgets", {"name": "a"}).json()["key"] == first


def test_action_in_either_decorator_order(client_alice: APIClient) -> None:
    widget = Widget.objects.create(name="w")
    for path in (f"/t/widgets/{widget.pk}/rename", f"/t/widgets/{widget.pk}/touch"):
        first = post(client_alice, path, {"name": "n"}, key=path)
        second = post(client_alice, path, {"name": "n"}, key=path)
        assert first.status_code == 200
        assert second["Idempotent-Replayed"] == "true"
        assert second.content == first.content
        assert post(client_alice, path, {"name": "n"}, key=None).status_code == 400
    assert Widget.objects.filter(name__in=["rename-run", "touch-run"]).count() == 2


def test_api_view_function(client_alice: APIClient) -> None:
    first = post(client_alice, "/t/function", {"name": "f"})
    second = post(client_alice, "/t/function", {"name": "f"})
    assert first.status_code == 201
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true"
    assert client_alice.get("/t/function").json() == {"count": 1}


def test_plain_django_view_with_binary_body_replays_byte_exact(
    client_alice: APIClient, alice
) -> None:
    client = APIClient()
    client.force_login(alice)
    payload = bytes(range(255, -1, -1))
    first = client.post(
        "/t/plain", payload, content_type="application/octet-stream", HTTP_IDEMPOTENCY_KEY="bin"
    )
    second = client.post(
        "/t/plain", payload, content_type="application/octet-stream", HTTP_IDEMPOTENCY_KEY="bin"
    )
    assert first.status_code == 200
    assert second.content == first.content == bytes(range(256)) + payload
    assert second["Content-Type"] == "application/octet-stream"
    assert second["Idempotent-Replayed"] == "true"
    changed = client.post(
        "/t/plain", payload[1:], content_type="application/octet-stream", HTTP_IDEMPOTENCY_KEY="bin"
    )
    assert changed.status_code == 409


def test_invalid_json_body_is_fingerprinted_as_bytes(
    client_alice: APIClient, store: StoreUnderTest
) -> None:
    bad = b'{"name": "a"'
    first = client_alice.post(
        "/t/widgets", bad, content_type="application/json", HTTP_IDEMPOTENCY_KEY="j"
    )
    assert first.status_code == 400  # DRF's parse error, not a 500; released
    assert store.records() == []


@pytest.mark.parametrize("store", ["database"], indirect=True)
def test_view_that_breaks_the_transaction_gets_503_and_nothing_is_kept(
    client_alice: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the outcome cannot be stored, the view's writes go too: say "not processed"."""
    from django.db import connection

    from django_idempotency.stores.database import DatabaseStore

    original = DatabaseStore.finish

    def broken_finish(self, claim, response):  # type: ignore[no-untyped-def]
        # What a view that swallowed a database error leaves behind.
        connection.needs_rollback = True
        return original(self, claim, response)

    monkeypatch.setattr(DatabaseStore, "finish", broken_finish)
    response = post(client_alice, "/t/widgets", {"name": "a"})
    assert response.status_code == 503
    envelope(response, error_type="idempotency_store_unavailable")
    monkeypatch.undo()
    assert Widget.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0
    assert post(client_alice, "/t/widgets", {"name": "a"}).status_code == 201


def test_a_scope_longer_than_the_column_is_hashed_and_still_separate(
    client_alice: APIClient, client_bob: APIClient
) -> None:
    with override_settings(
        IDEMPOTENCY_SCOPE=lambda request: "tenant:" + "x" * 300 + request.user.username
    ):
        a = post(client_alice, "/t/widgets", {"name": "a"})
        b = post(client_bob, "/t/widgets", {"name": "a"})
        assert a.status_code == b.status_code == 201
        assert "Idempotent-Replayed" not in b
        assert post(client_alice, "/t/widgets", {"name": "a"})["Idempotent-Replayed"] == "true"
