"""Edges of the content fingerprint, with Django's test client and request factory.

The proof with real clients and random boundaries is tests/integration/test_forms_http.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings
from rest_framework.test import APIClient

from django_idempotency import idempotent
from django_idempotency.fingerprint import canonical_body, canonical_json
from django_idempotency.models import IdempotencyRecord
from tests.testapp.models import Widget


@pytest.mark.parametrize(
    "body",
    [
        b'{"b": 1, "a": [1, 2.5, "\\u00e9"]}',
        b"[]",
        b'"text"',
        b'{"n": 10000000000000000001}',
        b'{"a": {"b": {"c": null}}, "x": true}',
    ],
)
def test_json_parsed_elsewhere_gives_the_bytes_canonical_form(body: bytes) -> None:
    # What the decorator does when a DRF parser read the stream first.
    assert canonical_json(json.loads(body)) == canonical_body("application/json", body)


@idempotent
def _plain(request: HttpRequest) -> HttpResponse:
    Widget.objects.create(name="plain")
    return HttpResponse(status=201)


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
def test_the_size_limit_applies_when_the_body_was_read_from_the_stream_first(
    alice: User,
) -> None:
    request = RequestFactory().post(
        "/t/plain", b"x" * 101, content_type="text/plain", HTTP_IDEMPOTENCY_KEY="big"
    )
    request.user = alice
    request.read()  # as a parser that reads the stream would, without Django's check
    response = _plain(request)
    assert response.status_code == 413
    assert json.loads(response.content)["error"]["type"] == "request_too_large"
    assert not IdempotencyRecord.objects.exists()
    assert not Widget.objects.exists()


@override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=3)
def test_too_many_fields_is_413(client_alice: APIClient) -> None:
    response = client_alice.post(
        "/t/upload", {f"f{i}": "v" for i in range(5)}, HTTP_IDEMPOTENCY_KEY="many"
    )
    assert response.status_code == 413, response.content
    assert not Widget.objects.exists()


def test_a_form_and_the_same_fields_as_multipart_are_one_request(client_alice: APIClient) -> None:
    fields: Any = {"name": "n", "tag": ["a", "b"]}
    first = client_alice.post("/t/upload", fields, HTTP_IDEMPOTENCY_KEY="f")  # multipart
    assert first.status_code == 201
    again = client_alice.post(
        "/t/upload",
        "tag=a&name=n&tag=b",
        content_type="application/x-www-form-urlencoded",
        HTTP_IDEMPOTENCY_KEY="f",
    )
    assert again["Idempotent-Replayed"] == "true"


def test_a_session_caller_with_csrf_gets_the_same_fingerprint_as_a_token_caller(
    alice: User,
) -> None:
    # DRF's CSRF check parses the multipart body before the decorator for the
    # session caller; the token caller's body is parsed by the decorator.
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.authtoken.models import Token

    def form() -> dict[str, Any]:
        return {"name": "n", "f": SimpleUploadedFile("a.txt", b"abc", "text/plain")}

    session = APIClient(enforce_csrf_checks=True)
    session.login(username="alice", password="alice-pw")
    session.get("/t/login")
    token_value = session.cookies["csrftoken"].value
    first = session.post(
        "/t/upload", form(), HTTP_IDEMPOTENCY_KEY="same", HTTP_X_CSRFTOKEN=token_value
    )
    assert first.status_code == 201, first.content
    token = Token.objects.create(user=alice)
    by_token = APIClient()
    by_token.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    again = by_token.post("/t/upload", form(), HTTP_IDEMPOTENCY_KEY="same")
    assert again["Idempotent-Replayed"] == "true"
    assert Widget.objects.count() == 1


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2_621_440, FILE_UPLOAD_MAX_MEMORY_SIZE=2_621_440)
def test_a_large_upload_is_hashed_from_disk_not_held_in_memory(alice: User) -> None:
    import tracemalloc

    from django.test.client import MULTIPART_CONTENT, encode_multipart

    size = 24 * 1024 * 1024
    boundary = "b0und4ry"
    request = RequestFactory().post(
        "/t/plain-upload",
        encode_multipart(boundary, {"name": "big", "f": _Named(b"z" * size, "big.bin")}),
        content_type=MULTIPART_CONTENT.replace("BoUnDaRyStRiNg", boundary),
        HTTP_IDEMPOTENCY_KEY="big",
    )
    request.user = alice
    request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
    from tests.testapp.upload_views import plain_upload

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        response = plain_upload(request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 201, response.content
    # The body is already in memory (the test's input stream); the decorator
    # and the view together add far less than one more copy of it.
    assert peak < size / 4, f"{peak / 2**20:.1f} MiB"


class _Named:
    """A file for encode_multipart: its bytes and a name."""

    def __init__(self, content: bytes, name: str) -> None:
        import io

        self._io = io.BytesIO(content)
        self.name = name

    def read(self, *args: Any) -> bytes:
        return self._io.read(*args)


def test_json_read_by_drfs_csrf_check_gets_the_fingerprint_of_its_bytes(alice: User) -> None:
    # Before DRF 3.16 its CSRF check reads a JSON body from the stream, so the
    # decorator canonicalises what DRF parsed; later DRF keeps the bytes.
    from rest_framework.authtoken.models import Token

    session = APIClient(enforce_csrf_checks=True)
    session.login(username="alice", password="alice-pw")
    session.get("/t/login")
    first = session.post(
        "/t/upload",
        b'{"b": [1, 2], "a": "x"}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="json",
        HTTP_X_CSRFTOKEN=session.cookies["csrftoken"].value,
    )
    assert first.status_code == 201, first.content
    by_token = APIClient()
    by_token.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    again = by_token.post(
        "/t/upload",
        b'{"a":"x","b":[1,2]}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="json",
    )
    assert again["Idempotent-Replayed"] == "true"
    other = by_token.post(
        "/t/upload",
        b'{"a":"x","b":[2,1]}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="json",
    )
    assert other.status_code == 409


# A body that a DRF parser read from the stream before the decorator (DRF's
# CSRF check parses it for a session caller): the fingerprint is taken from
# that parse, and a caller whose body is read by nobody first gets the same one.


def _session(alice: User) -> tuple[APIClient, dict[str, str]]:
    session = APIClient(enforce_csrf_checks=True)
    session.login(username="alice", password="alice-pw")
    session.get("/t/login")
    return session, {"HTTP_X_CSRFTOKEN": session.cookies["csrftoken"].value}


def _token(alice: User) -> APIClient:
    from rest_framework.authtoken.models import Token

    by_token = APIClient()
    by_token.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    return by_token


@pytest.mark.parametrize(
    ("content_type", "body", "same", "other"),
    [
        ("text/plain", b"hello", b"hello", b"hullo"),
        ("application/merge-patch+json", b'{"b": 1, "a": 2}', b'{"a":2,"b":1}', b'{"a":1}'),
    ],
)
def test_a_body_parsed_from_the_stream_before_the_decorator_is_fingerprinted_by_its_parse(
    alice: User, content_type: str, body: bytes, same: bytes, other: bytes
) -> None:
    session, csrf = _session(alice)
    first = session.post(
        "/t/stream-parsed", body, content_type=content_type, HTTP_IDEMPOTENCY_KEY="s", **csrf
    )
    assert first.status_code == 201, first.content
    again = session.post(
        "/t/stream-parsed", same, content_type=content_type, HTTP_IDEMPOTENCY_KEY="s", **csrf
    )
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    changed = session.post(
        "/t/stream-parsed", other, content_type=content_type, HTTP_IDEMPOTENCY_KEY="s", **csrf
    )
    assert changed.status_code == 409
    assert changed.json()["error"]["type"] == "idempotency_conflict"
    assert Widget.objects.count() == 1


def test_a_file_parsed_from_the_stream_before_the_decorator_is_fingerprinted_by_its_hash(
    alice: User,
) -> None:
    session, csrf = _session(alice)

    def upload(content: bytes, name: str = "a.bin") -> Any:
        return session.post(
            "/t/stream-parsed",
            content,
            content_type="application/octet-stream",
            HTTP_CONTENT_DISPOSITION=f"attachment; filename={name}",
            HTTP_IDEMPOTENCY_KEY="file",
            **csrf,
        )

    assert upload(b"abc").status_code == 201
    assert upload(b"abc")["Idempotent-Replayed"] == "true"
    assert upload(b"abd").status_code == 409
    assert upload(b"abc", name="b.bin").status_code == 409
    assert Widget.objects.count() == 1


def test_a_plain_view_whose_body_was_read_before_the_decorator_is_refused(alice: User) -> None:
    # The bytes are gone and no parse kept them: 400, and the view never runs.
    client = APIClient()
    client.force_login(alice)
    response = client.post(
        "/t/plain-read-first",
        b'{"a": 1}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="r",
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "request_body_invalid"
    assert Widget.objects.count() == 0
    assert not IdempotencyRecord.objects.exists()
