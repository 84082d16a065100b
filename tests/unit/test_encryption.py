"""Stored responses encrypted at rest (IDEMPOTENCY_ENCRYPTION_KEYS), proven from
outside: the demo's POST /v1/api_keys answers with a live secret, and neither the
records table (raw SQL) nor the Redis value (GET and DUMP) may hold it."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core import checks
from django.test import override_settings
from rest_framework.test import APIClient

from django_idempotency import encryption
from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores.base import StoredResponse
from testproject.api.models import ApiKey
from tests.helpers import StoreUnderTest, demo_client, redis_client, staff

pytestmark = pytest.mark.django_db

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def issue(client: APIClient, key: str = "issue-1", name: str = "ci") -> Any:
    return client.post("/v1/api_keys", {"name": name}, format="json", HTTP_IDEMPOTENCY_KEY=key)


def issued(client: APIClient, name: str = "ci") -> int:
    """How many times the view really ran: the keys it issued."""
    return ApiKey.objects.filter(account=client.account, name=name).count()  # type: ignore[attr-defined]


def assert_unreadable(response: Any) -> None:
    assert response.status_code == 500, response.content
    error = response.json()["error"]
    assert error["type"] == "idempotency_record_unreadable"
    assert response["Request-Id"] == error["request_id"]
    assert response["X-Should-Retry"] == "false"
    assert "Retry-After" not in response


def corrupt(store: StoreUnderTest) -> None:
    """Change one character of every stored token, as a bad disk or a hand would."""

    def flipped(value: bytes) -> bytes:
        at = len(value) - 20
        return value[:at] + (b"A" if value[at : at + 1] != b"A" else b"B") + value[at + 1 :]

    if store.name == "database":
        for record in IdempotencyRecord.objects.exclude(response_body=None):
            record.response_body = flipped(bytes(record.response_body))
            record.save()
        return
    from django.conf import settings

    client = redis_client()
    for name in client.scan_iter(match=settings.REDIS_TEST_PREFIX + ":*"):
        client.set(name, flipped(client.get(name)), keepttl=True)


def test_the_issued_secret_is_nowhere_in_the_store_and_replays(
    store: StoreUnderTest, settings: Any
) -> None:
    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_A]
    client = demo_client()
    first = issue(client)
    assert first.status_code == 201, first.content
    secret = first.json()["secret"]
    assert len(secret) > 20

    for value in store.raw_values():
        assert secret.encode() not in value
        assert b'"name"' not in value  # no part of the body or its headers either
        assert b"application/json" not in value

    retry = issue(client)
    assert retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.json() == first.json()
    assert retry["Content-Type"] == first["Content-Type"]
    assert issued(client) == 1


def test_a_key_rotation_replays_old_records_and_a_removed_key_refuses_them(
    store: StoreUnderTest, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = demo_client()
    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_A]
    under_a = issue(client, "under-a")
    assert under_a.status_code == 201

    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    assert issue(client, "under-a").json() == under_a.json()
    under_b = issue(client, "under-b", name="rotated")
    assert under_b.status_code == 201
    sealed_by = {headers[0][1] for headers in (rec.headers for rec in store.records())}
    assert sealed_by == {f"fernet {encryption.key_id(KEY_A)}", f"fernet {encryption.key_id(KEY_B)}"}

    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_B]
    assert issue(client, "under-b", name="rotated").json() == under_b.json()
    with caplog.at_level(logging.ERROR, logger="django_idempotency.encryption"):
        assert_unreadable(issue(client, "under-a"))
    assert issued(client) == 1  # the view did not run again

    (line,) = [r.getMessage() for r in caplog.records if r.name == "django_idempotency.encryption"]
    assert f"sealed with key {encryption.key_id(KEY_A)}" in line
    assert "not in IDEMPOTENCY_ENCRYPTION_KEYS" in line
    assert "under-a" in line
    assert KEY_A not in line and KEY_B not in line


def test_a_corrupted_token_is_refused_without_running_the_view(
    store: StoreUnderTest, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_A]
    client = demo_client()
    assert issue(client).status_code == 201
    corrupt(store)
    with caplog.at_level(logging.ERROR, logger="django_idempotency.encryption"):
        assert_unreadable(issue(client))
    assert issued(client) == 1
    assert "corrupted or altered" in caplog.text


def test_records_kept_in_plaintext_still_replay_once_encryption_is_on(
    store: StoreUnderTest, settings: Any
) -> None:
    client = demo_client()
    first = issue(client)
    assert first.status_code == 201
    # The probe sees a plaintext record: its silence under encryption means something.
    assert any(first.json()["secret"].encode() in value for value in store.raw_values())
    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_A]
    retry = issue(client)
    assert retry.status_code == 201 and retry["Idempotent-Replayed"] == "true"
    assert retry.json() == first.json()
    assert issued(client) == 1


def test_sealed_records_are_refused_once_encryption_is_off(
    store: StoreUnderTest, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_A]
    client = demo_client()
    assert issue(client).status_code == 201
    settings.IDEMPOTENCY_ENCRYPTION_KEYS = None
    with caplog.at_level(logging.ERROR, logger="django_idempotency.encryption"):
        assert_unreadable(issue(client))
    assert issued(client) == 1
    assert "encryption is off" in caplog.text


@pytest.mark.parametrize("status", [200, 201, 404])
def test_a_sealed_response_opens_only_as_itself(settings: Any, status: int) -> None:
    """A status edited in the clear, or a token moved to another record, is refused."""
    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_A]
    plain = StoredResponse(status, [("Content-Type", "text/plain"), ("X-A", "1")], b"\x00body\n")
    sealed = encryption.seal(plain, "user:1", "k")
    assert encryption.is_sealed(sealed) and sealed.status == status
    assert encryption.unseal(sealed, "user:1", "k") == plain
    with pytest.raises(encryption.Unreadable, match="another record"):
        encryption.unseal(sealed, "user:2", "k")
    with pytest.raises(encryption.Unreadable, match="another record"):
        encryption.unseal(sealed, "user:1", "k2")
    edited = StoredResponse(status + 1, sealed.headers, sealed.body)
    with pytest.raises(encryption.Unreadable, match="status was altered"):
        encryption.unseal(edited, "user:1", "k")
    unknown = StoredResponse(status, [(encryption.MARKER, "rot13 x")], sealed.body)
    with pytest.raises(encryption.Unreadable, match="unknown scheme"):
        encryption.unseal(unknown, "user:1", "k")


def test_the_admin_shows_opened_responses_masked_and_never_fails_on_an_unreadable_one(
    database_store: None, settings: Any
) -> None:
    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_A]
    client = demo_client()
    secret = issue(client, name="shown-name").json()["secret"]
    record = IdempotencyRecord.objects.get()
    admin = staff("view")
    url = f"/admin/django_idempotency/idempotencyrecord/{record.pk}/change/"

    page = admin.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "shown-name" in html and "application/json" in html  # opened
    assert secret not in html and "********" in html  # still masked
    assert encryption.MARKER not in html

    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_B]
    page = admin.get(url)
    assert page.status_code == 200
    assert "cannot be decrypted" in page.content.decode()
    assert admin.get("/admin/django_idempotency/idempotencyrecord/").status_code == 200


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (None, []),
        ([KEY_A], []),
        ([KEY_B, KEY_A.encode()], []),
        ([], ["django_idempotency.W060"]),
        (KEY_A, ["django_idempotency.E060"]),
        ({"a": KEY_A}, ["django_idempotency.E060"]),
        ([KEY_A, "not-a-key"], ["django_idempotency.E060"]),
        ([KEY_A[:-2]], ["django_idempotency.E060"]),
        ([42], ["django_idempotency.E060"]),
    ],
)
def test_the_key_list_is_checked(keys: Any, expected: list[str]) -> None:
    with override_settings(IDEMPOTENCY_ENCRYPTION_KEYS=keys):
        messages = encryption.check()
    assert [m.id for m in messages] == expected
    for message in messages:
        assert KEY_A not in f"{message.msg} {message.hint}"  # never the secret


def test_the_app_checks_include_the_key_list() -> None:
    from django_idempotency.checks import check_settings

    with override_settings(IDEMPOTENCY_ENCRYPTION_KEYS=["not-a-key"]):
        assert "django_idempotency.E060" in [m.id for m in check_settings()]


def test_the_fingerprint_stays_a_plain_hash_of_the_request(
    database_store: None, settings: Any
) -> None:
    """As docs/security.rst says: encrypted or not, the fingerprint confirms a
    guess of a whole request to whoever holds the table."""
    from django_idempotency.fingerprint import canonical_body, fingerprint_content

    settings.IDEMPOTENCY_ENCRYPTION_KEYS = [KEY_A]
    assert issue(demo_client(), name="guessable").status_code == 201
    guess = canonical_body("application/json", b'{"name": "guessable"}')
    stored = IdempotencyRecord.objects.get().fingerprint
    assert stored == fingerprint_content("POST", "/v1/api_keys", "", guess)


def test_the_key_list_needs_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # as if not installed
    with override_settings(IDEMPOTENCY_ENCRYPTION_KEYS=[KEY_A]):
        messages = encryption.check()
        assert [m.id for m in messages] == ["django_idempotency.E061"]
        assert isinstance(messages[0], checks.Error)
