"""Hostile input: any header, any body, any content type gets a documented answer, never a 500.

Property-based (hypothesis). The default profile runs a few dozen examples per
test; ``scripts/soak`` runs many more (HYPOTHESIS_PROFILE=soak). The Django test
client raises on a 500, so a crash anywhere fails the example.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils.http import parse_header_parameters
from hypothesis import example, given
from hypothesis import strategies as st
from rest_framework.test import APIClient

from django_idempotency.fingerprint import MAX_JSON_DEPTH
from django_idempotency.keys import MAX_KEY_LENGTH
from django_idempotency.models import IdempotencyRecord
from tests.helpers import StoreUnderTest, delete_test_keys, envelope
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db

# Small, so that "over the limit" bodies are cheap to make.
BODY_LIMIT = 4096
PACKAGE_ERRORS = {
    400: {"idempotency_key_invalid", "idempotency_key_missing", "request_body_invalid"},
    403: {"idempotency_scope_unavailable"},
    409: {"idempotency_conflict", "idempotency_key_in_use"},
    413: {"request_too_large"},
}

printable_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
header_values = st.one_of(
    st.text(),  # any unicode, control characters included
    st.text(st.characters(max_codepoint=0xFF)),  # what WSGI servers hand over (latin-1)
    st.text(printable_ascii, min_size=1, max_size=300),
    st.text(printable_ascii, min_size=240, max_size=270),  # around the length limit
    st.text(min_size=1000, max_size=20_000),  # huge
    st.just(""),
    st.text(printable_ascii).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.text(printable_ascii).map(lambda s: '"' + s + '"'),  # quoted, escapes unchecked
    st.lists(st.text(printable_ascii, min_size=1, max_size=20), min_size=2, max_size=5).map(
        ", ".join  # a repeated header, as servers fold it
    ),
    st.text(st.sampled_from(' \t"\\,\x00\x7f\r\n')),
)


def fresh(store: StoreUnderTest) -> None:
    # Examples of one test share its database (and transaction): start each clean.
    IdempotencyRecord.objects.all().delete()
    if store.name == "redis":
        delete_test_keys()
    Widget.objects.all().delete()


def assert_envelope(response: Any, status: int) -> str:
    error_type: str = envelope(response, status)["type"]
    assert error_type in PACKAGE_ERRORS[status]
    return error_type


def is_acceptable_key(raw: str) -> bool:
    """An independent, simpler statement of which header values are one key."""
    value = raw.strip(" \t")
    if value.startswith('"'):
        if not (value.endswith('"') and len(value) >= 2):
            return False
        inner, out, escaped = value[1:-1], [], False
        for char in inner:
            if escaped:
                if char not in '"\\':
                    return False
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                return False
            else:
                out.append(char)
        if escaped:
            return False
        key = "".join(out)
    else:
        if "," in value:
            return False
        key = value
    return 0 < len(key) <= MAX_KEY_LENGTH and all(" " <= c <= "~" for c in key)


@given(raw=header_values)
@example(raw="a" * MAX_KEY_LENGTH)
@example(raw="a" * (MAX_KEY_LENGTH + 1))
@example(raw='"' + "a" * MAX_KEY_LENGTH + '"')
@example(raw="k1\x00")
@example(raw='"a" , "b"')
def test_any_header_value_is_one_key_or_a_400(
    client_alice: APIClient, store: StoreUnderTest, raw: str
) -> None:
    fresh(store)
    response = client_alice.post(
        "/t/widgets", {"name": "h"}, format="json", HTTP_IDEMPOTENCY_KEY=raw
    )
    if not is_acceptable_key(raw):
        assert assert_envelope(response, 400) == "idempotency_key_invalid"
        assert not store.records(), "nothing stored for a refused key"
        assert not Widget.objects.exists()
        return
    assert response.status_code == 201, response.content
    (record,) = store.records()
    assert 0 < len(record.key) <= MAX_KEY_LENGTH
    assert record.key.isascii() and record.key.isprintable()
    again = client_alice.post("/t/widgets", {"name": "h"}, format="json", HTTP_IDEMPOTENCY_KEY=raw)
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == response.content
    assert Widget.objects.count() == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


def nested(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["name", "owner", "x"]), json_values, max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),
    st.binary(max_size=300),  # not UTF-8, mostly
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.text(max_size=100).map(lambda s: ('{"name": "' + s).encode("utf-8", "surrogatepass")),
    st.integers(0, (BODY_LIMIT - 12) // 2).map(nested),  # deeply nested, under the size limit
    st.integers(BODY_LIMIT - 20, BODY_LIMIT * 3).map(lambda n: b'{"name": "' + b"a" * n + b'"}'),
    st.sampled_from([b"", b"{}", b"[]", b"null", b"NaN", b'"\\ud800"', b"\xef\xbb\xbf{}"]),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/json; charset=no-such-codec",
            "application/problem+json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "multipart/form-data",
            "text/plain",
            "application/octet-stream",
            "",
        ]
    ),
    st.text(st.characters(max_codepoint=0xFF), max_size=60),
)


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=BODY_LIMIT)
@given(body=bodies, content_type=content_types, path=st.sampled_from(["/t/widgets", "/t/plain"]))
@example(body=nested(2_000), content_type="application/json", path="/t/widgets")
@example(body=b"\xff\xfe\x00", content_type="application/json; charset=utf-8", path="/t/widgets")
def test_any_body_gets_a_documented_answer(
    client_alice: APIClient,
    alice: Any,
    store: StoreUnderTest,
    body: bytes,
    content_type: str,
    path: str,
) -> None:
    fresh(store)
    client = client_alice
    if path == "/t/plain":  # a plain Django view: session authentication
        client = APIClient()
        client.force_login(alice)
    response = client.generic(
        "POST", path, body, content_type=content_type, HTTP_IDEMPOTENCY_KEY="hostile"
    )
    status = response.status_code
    assert status < 500, response.content[:500]
    # Multipart bodies are streamed, as Django does: only their fields count
    # against the in-memory limit (a 413 too, below), not the whole body.
    streamed = parse_header_parameters(content_type)[0] == "multipart/form-data"
    if len(body) > BODY_LIMIT and not streamed:
        assert_envelope(response, 413)
        assert not store.records(), "refused before anything is stored"
        assert not Widget.objects.exists()
        return
    if status in (201, 200):
        assert Widget.objects.count() == 1
    else:
        # The package's 400 request_body_invalid (too deeply nested), or the
        # view's own rejections: DRF's parse and validation errors (400, not
        # stored) and unsupported media types (415, a definitive answer).
        assert status in (400, 413, 415), (status, response.content[:300])
        assert not Widget.objects.exists()
        if json.loads(response.content)["error"]["type"] in (
            "request_body_invalid",
            "request_too_large",
        ):
            assert not store.records()
    for record in store.records():
        # The stored record is bounded by the key and the response; the request
        # body itself is never stored, only its fingerprint.
        assert (record.body or b"") == response.content
        assert len(record.key) <= MAX_KEY_LENGTH


@pytest.mark.parametrize("depth", [1, MAX_JSON_DEPTH - 1])
def test_json_nested_up_to_the_limit_is_accepted(client_alice: APIClient, depth: int) -> None:
    body = b'{"name": "n", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    response = client_alice.post(
        "/t/widgets", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="deep"
    )
    assert response.status_code == 201


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 5_000, 200_000])
def test_json_nested_deeper_than_the_limit_is_400(client_alice: APIClient, depth: int) -> None:
    body = b'{"name": "n", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    response = client_alice.post(
        "/t/widgets", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="deep"
    )
    assert assert_envelope(response, 400) == "request_body_invalid"
    assert not IdempotencyRecord.objects.exists()


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=BODY_LIMIT)
@pytest.mark.parametrize("size", [BODY_LIMIT + 1, BODY_LIMIT * 50])
def test_oversized_multipart_field_is_413_before_anything_is_stored(
    client_alice: APIClient, size: int
) -> None:
    # Django limits a multipart body's fields (held in memory), not its files.
    response = client_alice.post("/t/widgets", {"name": "m" * size}, HTTP_IDEMPOTENCY_KEY="upload")
    assert_envelope(response, 413)
    assert not IdempotencyRecord.objects.exists()
    assert not Widget.objects.exists()


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=BODY_LIMIT, FILE_UPLOAD_MAX_MEMORY_SIZE=BODY_LIMIT)
def test_large_uploaded_file_is_streamed_and_fingerprinted(client_alice: APIClient) -> None:
    # As without the decorator, a file larger than the in-memory limits goes to
    # disk through Django's upload handlers, and is hashed from there.
    def send(content: bytes) -> Any:
        upload = SimpleUploadedFile("f.bin", content)
        return client_alice.post(
            "/t/widgets", {"name": "m", "f": upload}, HTTP_IDEMPOTENCY_KEY="upload"
        )

    assert send(b"x" * BODY_LIMIT * 50).status_code == 201
    assert send(b"x" * BODY_LIMIT * 50)["Idempotent-Replayed"] == "true"
    assert send(b"x" * (BODY_LIMIT * 50 - 1) + b"y").status_code == 409
    assert Widget.objects.count() == 1


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=BODY_LIMIT)
def test_multipart_upload_under_the_limit_is_fingerprinted_and_replayed(
    client_alice: APIClient,
) -> None:
    def send(content: bytes) -> Any:
        upload = SimpleUploadedFile("f.bin", content)
        return client_alice.post(
            "/t/widgets", {"name": "m", "f": upload}, HTTP_IDEMPOTENCY_KEY="upload"
        )

    first = send(b"x" * 100)
    assert first.status_code == 201
    assert send(b"x" * 100)["Idempotent-Replayed"] == "true"
    assert send(b"y" * 100).status_code == 409  # another file is another request
    assert Widget.objects.count() == 1


# The demo API (testproject/), every endpoint: only documented answers, never a 500.

DEMO_ENDPOINTS = [
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs/{job}/cancel"),
    ("POST", "/v1/jobs/{job}/rate"),
    ("POST", "/v1/api_keys"),
    ("POST", "/v1/webhook_endpoints"),
    ("POST", "/v1/billing/purchase"),
    ("PATCH", "/v1/jobs/{job}"),
    ("GET", "/v1/jobs"),
]


@pytest.fixture
def demo_client(db: None) -> tuple[APIClient, int]:
    from django.contrib.auth.models import User

    from testproject.api.models import Account, ApiKey, Job

    account = Account.objects.create(user=User.objects.create_user("hostile"), credits_cents=10**9)
    _, secret = ApiKey.issue(account)
    job = Job.objects.create(
        account=account,
        type="t",
        description="d",
        files_needed=1,
        price_per_file_cents=1,
        accepted_formats=["image/jpeg"],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client, job.pk


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=BODY_LIMIT)
@given(
    endpoint=st.sampled_from(DEMO_ENDPOINTS),
    body=bodies,
    content_type=content_types,
    raw_key=st.one_of(st.none(), header_values),
)
@example(
    endpoint=("PATCH", "/v1/jobs/{job}"),
    body=nested(2_000),
    content_type="application/json",
    raw_key=None,
)
def test_the_demo_answers_anything_with_a_documented_status(
    demo_client: tuple[APIClient, int],
    endpoint: tuple[str, str],
    body: bytes,
    content_type: str,
    raw_key: str | None,
) -> None:
    client, job = demo_client
    method, path = endpoint
    extra = {} if raw_key is None else {"HTTP_IDEMPOTENCY_KEY": raw_key}
    response = client.generic(
        method, path.format(job=job), body, content_type=content_type, **extra
    )
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400:
        error = json.loads(response.content)["error"]
        assert error["type"] and error["message"]
        assert response["Request-Id"] == error["request_id"]
