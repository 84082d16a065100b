"""The test helpers that users get: django_idempotency.testing."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.test import override_settings

from django_idempotency.testing import (
    IdempotencyAPITestClient,
    IdempotencyTestClient,
    assert_replayed,
)
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(alice: User) -> IdempotencyAPITestClient:
    client = IdempotencyAPITestClient()
    client.force_authenticate(alice)
    return client


def test_every_post_gets_a_fresh_key(api: IdempotencyAPITestClient) -> None:
    first = api.post("/t/widgets", {"name": "a"}, format="json")
    first_key = api.last_key
    second = api.post("/t/widgets", {"name": "a"}, format="json")
    assert first.status_code == second.status_code == 201
    assert first_key is not None and api.last_key is not None
    assert first_key != api.last_key
    assert uuid.UUID(api.last_key).version == 4
    assert "Idempotent-Replayed" not in second
    assert Widget.objects.count() == 2


def test_retry_resends_the_last_post_and_asserts_an_identical_replay(
    api: IdempotencyAPITestClient,
) -> None:
    first = api.post("/t/widgets", {"name": "a"}, format="json", HTTP_X_EXTRA="1")
    replay = api.retry()
    assert replay.status_code == 201
    assert replay.content == first.content
    assert replay["Location"] == first["Location"]
    assert api.last_response is first
    assert Widget.objects.count() == 1


@pytest.mark.usefixtures("database_store")  # asserts the rollback of the view's writes
def test_retry_fails_when_the_first_answer_was_not_stored(api: IdempotencyAPITestClient) -> None:
    response = api.post("/t/apiview", {"outcome": "422"}, format="json")
    assert response.status_code == 422
    with pytest.raises(AssertionError, match="expected a replayed response"):
        api.retry()
    # Both runs were rolled back with their released claims.
    assert Widget.objects.count() == 0


def test_retry_needs_a_post_first(api: IdempotencyAPITestClient) -> None:
    with pytest.raises(AssertionError, match="no"):
        api.retry()


@pytest.mark.parametrize(
    "how",
    [
        {"idempotency_key": "given"},
        {"HTTP_IDEMPOTENCY_KEY": "given"},
        {"headers": {"idempotency-key": "given"}},
    ],
    ids=["argument", "meta", "headers"],
)
def test_a_given_key_is_used(api: IdempotencyAPITestClient, how: dict) -> None:
    api.post("/t/widgets", {"name": "a"}, format="json", **how)
    assert api.last_key == "given"
    replay = api.post("/t/widgets", {"name": "a"}, format="json", idempotency_key="given")
    assert_replayed(replay)
    assert Widget.objects.count() == 1


def test_the_key_argument_replaces_a_header(api: IdempotencyAPITestClient) -> None:
    api.post("/t/widgets", {"name": "a"}, format="json", idempotency_key="first")
    replay = api.post(
        "/t/widgets",
        {"name": "a"},
        format="json",
        idempotency_key="first",
        headers={"Idempotency-Key": "other"},
    )
    assert_replayed(replay)


def test_no_key_when_asked(api: IdempotencyAPITestClient) -> None:
    response = api.post("/t/widgets", {"name": "a"}, format="json", idempotency_key=None)
    assert response.status_code == 400
    assert api.last_key is None


def test_other_methods_are_left_alone(api: IdempotencyAPITestClient) -> None:
    assert api.get("/t/function").status_code == 200
    assert api.last_key is None


@override_settings(IDEMPOTENCY_HEADER="X-Request-Key")
def test_follows_the_header_setting(api: IdempotencyAPITestClient) -> None:
    api.post("/t/widgets", {"name": "a"}, format="json")
    api.retry()
    assert Widget.objects.count() == 1


def test_django_client_for_plain_views(alice: User) -> None:
    client = IdempotencyTestClient()
    client.force_login(alice)
    first = client.post("/t/plain", b"\x00\xff", content_type="application/octet-stream")
    assert first.status_code == 200
    client.retry()
    assert Widget.objects.count() == 1


def test_assert_replayed_compares_status_body_and_headers() -> None:
    original = HttpResponse(b"one", status=201, headers={"Location": "/a", "Request-Id": "req_1"})
    replay = HttpResponse(
        b"one",
        status=201,
        headers={"Location": "/a", "Request-Id": "req_2", "Idempotent-Replayed": "true"},
    )
    assert_replayed(replay, original)
    with pytest.raises(AssertionError, match="expected a replayed response"):
        assert_replayed(original)
    replay.content = b"two"
    with pytest.raises(AssertionError, match="body differs"):
        assert_replayed(replay, original)
    replay.content = b"one"
    replay["Location"] = "/b"
    with pytest.raises(AssertionError, match="headers differ"):
        assert_replayed(replay, original)
    replay["Location"] = "/a"
    replay.status_code = 200
    with pytest.raises(AssertionError, match="status"):
        assert_replayed(replay, original)


def test_other_headers_in_the_call_still_get_a_fresh_key(api: IdempotencyAPITestClient) -> None:
    # The helper looks for the key among the call's headers; others are not it.
    api.post("/t/widgets", {"name": "a"}, format="json", headers={"X-Trace": "t1"})
    assert api.last_key is not None and uuid.UUID(api.last_key).version == 4
    assert Widget.objects.count() == 1
