"""The admin hands out no masked secret, to a staff user who may only view records.

The detail page masks ``"secret": "..."`` in a stored body, but Django's
changelist accepts a lookup on any field in its query string: with
``?response_body__regex="secret":"fh_test_K`` listing one row and
``..._X`` none, a secret falls one character at a time. Here every lookup on
every content field must answer a right guess and a wrong one the same way (a
400), and nothing else (search, ordering, the filters carried through the
detail page, actions, popups, history, error pages) may tell them apart.
Generic SQL only: the same tests run on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import json
import re
from html import unescape
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from django_idempotency.admin import LOOKUP_FIELDS, IdempotencyRecordAdmin
from django_idempotency.models import IdempotencyRecord
from testproject.api.models import Account, ApiKey
from tests.helpers import make_record, staff

pytestmark = pytest.mark.django_db

LIST = "/admin/django_idempotency/idempotencyrecord/"

#: Stored request/response content, or derived from it: never a lookup.
CONTENT_FIELDS = ("response_body", "response_headers", "fingerprint")

LOOKUPS = (
    "",
    "__exact",
    "__iexact",
    "__regex",
    "__iregex",
    "__contains",
    "__icontains",
    "__startswith",
    "__istartswith",
    "__endswith",
    "__iendswith",
    "__gt",
    "__gte",
    "__lt",
    "__lte",
    "__in",
    "__range",
    "__isnull",
    # Transforms, registered or not: refused before the database sees them.
    "__length",
    "__0",
    "__data",
    "__lower__contains",
    "__md5",
    "__contains__exact",
)

HEADER_SECRET = "hdr_live_Q7dM2xVb9Lk4Rz8Tw1Yp"
FINGERPRINT = "3fa9c1e07b" + "5d" * 27


def view_only_staff() -> Client:
    return staff("view")


def answer(response: Any) -> tuple[int, str, list[str] | None]:
    """What a response tells its reader: status, text (request ids and CSRF
    tokens, new on every response, blanked) and the rows listed."""
    text = response.content.decode()
    text = re.sub(r"req_[0-9A-Za-z]+", "req_", text)
    text = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", text)
    rows = None
    if response.context is not None and "cl" in response.context:
        rows = [record.key for record in response.context["cl"].result_list]
    return response.status_code, text, rows


def one_char_off(text: str) -> str:
    """``text`` with its last character replaced: the wrong next guess."""
    return text[:-1] + ("X" if text[-1] != "X" else "Y")


@pytest.fixture
def api_secret() -> str:
    """A real API key issued by the demo's ``POST /v1/api_keys``, whose
    response (the only place the secret is ever shown) the store keeps."""
    user = User.objects.create_user("owner")
    account = Account.objects.create(user=user, credits_cents=1000)
    _, first = ApiKey.issue(account)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {first}")
    created = api.post(
        "/v1/api_keys", {"name": "ci"}, format="json", HTTP_IDEMPOTENCY_KEY="create-ci-key"
    )
    assert created.status_code == 201, created.content
    secret: str = created.json()["secret"]
    # It is a live credential: what a leak would hand out.
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert other.get("/v1/account").status_code == 200
    return secret


@pytest.fixture
def stored(api_secret: str) -> dict[str, tuple[str, str]]:
    """For each content field: its stored value, and the secret in it."""
    record = IdempotencyRecord.objects.get(key="create-ci-key")
    make_record(
        "k-header",
        headers=[("Content-Type", "application/json"), ("X-Api-Key", HEADER_SECRET)],
        fingerprint=FINGERPRINT,
    )
    body = bytes(record.response_body).decode()
    headers = IdempotencyRecord.objects.get(key="k-header").response_headers
    assert api_secret in body and HEADER_SECRET in headers
    return {
        "response_body": (body, api_secret),
        "response_headers": (headers, HEADER_SECRET),
        "fingerprint": (FINGERPRINT, FINGERPRINT),
    }


def guesses(value: str, secret: str, lookup: str) -> tuple[str, str]:
    """A right guess of the first characters of ``secret`` in ``value`` for
    ``lookup``, and the same guess one character off."""
    end = value.index(secret) + 10  # ten characters of the secret guessed so far
    start = max(0, value.index(secret) - 12)  # and what precedes it
    if lookup in ("", "__exact", "__iexact", "__in"):
        right = value
    elif lookup in ("__startswith", "__istartswith", "__gt", "__gte", "__lt", "__lte"):
        right = value[:end]
    elif lookup in ("__endswith", "__iendswith"):
        right = value[end - 10 :]
        return right, "X" + right[1:]
    elif lookup in ("__regex", "__iregex"):
        right = re.escape(value[start:end])
    elif lookup == "__range":
        right = f"{secret[:9]},{secret[:10]}"
    elif lookup == "__isnull":
        return "False", "True"
    else:
        right = value[start:end]
    return right, one_char_off(right)


def test_every_model_field_is_shown_or_content() -> None:
    """A new field is a decision: listed (and filterable) or content (refused)."""
    fields = {field.name for field in IdempotencyRecord._meta.concrete_fields}
    assert fields == (LOOKUP_FIELDS - {"pk"}) | set(CONTENT_FIELDS)


@pytest.mark.parametrize("field", CONTENT_FIELDS)
def test_lookups_on_content_are_refused_and_tell_nothing(
    stored: dict[str, tuple[str, str]], field: str
) -> None:
    client = view_only_staff()
    value, secret = stored[field]
    for lookup in LOOKUPS:
        right, wrong = guesses(value, secret, lookup)
        answers = [
            answer(client.get(LIST, {f"{field}{lookup}": guess})) for guess in (right, wrong)
        ]
        assert answers[0][0] == 400, (field, lookup, answers[0])
        assert answers[0] == answers[1], (field, lookup)
        assert json.loads(answers[0][1])["error"]["type"] == "invalid_request"
        assert secret not in answers[0][1]
        # Beside an allowed filter, or in a differently spelled name.
        for params in (
            {"state__exact": "completed", f"{field}{lookup}": right},
            {f"{field.upper()}{lookup}": right},
        ):
            assert client.get(LIST, params).status_code == 400, params


def test_the_oracle_is_real_without_the_refusal(
    stored: dict[str, tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Django's own ``lookup_allowed``, the guesses above would tell
    right from wrong: the previous test would see a leak."""
    monkeypatch.setattr(IdempotencyRecordAdmin, "lookup_allowed", admin.ModelAdmin.lookup_allowed)
    client = view_only_staff()
    oracles = [
        ("response_headers", "__contains", "k-header"),
        ("fingerprint", "__startswith", "k-header"),
    ]
    if connection.vendor == "sqlite":  # the report's own query (a bytea on PostgreSQL)
        oracles.append(("response_body", "__regex", "create-ci-key"))
    for field, lookup, key in oracles:
        value, secret = stored[field]
        right, wrong = guesses(value, secret, lookup)
        assert answer(client.get(LIST, {f"{field}{lookup}": right}))[2] == [key]
        assert answer(client.get(LIST, {f"{field}{lookup}": wrong}))[2] == []


def test_allowed_filters_still_work(stored: dict[str, tuple[str, str]]) -> None:
    client = view_only_staff()
    today = timezone.localdate(IdempotencyRecord.objects.get(key="create-ci-key").created_at)
    for params, keys in (
        ({"key": "k-header"}, ["k-header"]),
        ({"scope__startswith": "user:"}, ["k-header", "create-ci-key"]),
        ({"method": "POST", "path": "/v1/api_keys"}, ["create-ci-key"]),
        ({"path__startswith": "/v1/", "created_at__date": str(today)}, ["create-ci-key"]),
        ({"state__exact": "completed", "status_class": "2xx"}, ["k-header", "create-ci-key"]),
        ({"response_status__gte": "500"}, []),
        ({"expired": "no", "pk__in": "0"}, []),
    ):
        response = client.get(LIST, params)
        assert response.status_code == 200, params
        assert answer(response)[2] == keys, params
    # Not a field, nor a filter's parameter: refused like content.
    assert client.get(LIST, {"nonsense": "1"}).status_code == 400


def test_search_never_matches_inside_content(stored: dict[str, tuple[str, str]]) -> None:
    client = view_only_staff()
    for field in CONTENT_FIELDS:
        value, secret = stored[field]
        for term in (secret, secret[:10], one_char_off(secret[:10]), value[:20]):
            status, _, rows = answer(client.get(LIST, {"q": term}))
            assert (status, rows) == (200, []), (field, term)
    assert answer(client.get(LIST, {"q": "create-ci-key"}))[2] == ["create-ci-key"]


@pytest.mark.parametrize("perms", [("view",), ("view", "delete")])
def test_no_ordering_reaches_content(stored: dict[str, tuple[str, str]], perms) -> None:
    """``?o=`` indexes the list's columns (after the action checkbox, for staff
    with actions): none of them sorts by content, whatever the index."""
    client = staff(*perms)
    orders = [str(i) for i in range(-2, 10)] + [f"-{i}" for i in range(10)]
    orders += [".".join(str(i) for i in range(10)), "x", "1.-x", "99999999999999999999"]
    for order in orders:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(LIST, {"o": order})
        assert response.status_code == 200, order
        for query in queries:
            sql = query["sql"].lower()
            if " order by " in sql:
                tail = sql.rsplit(" order by ", 1)[1]
                assert not [f for f in CONTENT_FIELDS if f in tail], (order, query["sql"])


def test_filters_carried_through_the_detail_page_are_refused_on_return(
    stored: dict[str, tuple[str, str]],
) -> None:
    """``_changelist_filters`` keeps the list's query string on the detail
    (and delete) pages for the way back; coming back, it is checked again."""
    value, secret = stored["response_headers"]
    record = IdempotencyRecord.objects.get(key="k-header")
    right, _ = guesses(value, secret, "__contains")
    carried = urlencode({"_changelist_filters": urlencode({"response_headers__contains": right})})
    viewer = view_only_staff()
    page = viewer.get(f"{LIST}{record.pk}/change/?{carried}")
    assert page.status_code == 200
    html = page.content.decode()
    assert secret not in html
    back = {unescape(href) for href in re.findall(rf'href="({re.escape(LIST)}\?[^"]*)"', html)}
    assert back, "the detail page links back to the filtered list"
    for href in back:
        assert viewer.get(href).status_code == 400, href

    # After a delete Django goes back to the list only for staff who may
    # change records, which nobody may: to the admin's index, filters dropped.
    deleter = staff("view", "delete")
    other = make_record("k-other")
    deleted = deleter.post(f"{LIST}{other.pk}/delete/?{carried}", {"post": "yes"})
    assert (deleted.status_code, deleted["Location"]) == (302, "/admin/")
    assert not IdempotencyRecord.objects.filter(pk=other.pk).exists()


def test_an_action_on_a_content_filter_is_refused(stored: dict[str, tuple[str, str]]) -> None:
    """The action "Expire selected keys" across a filtered list would expire exactly the
    records whose content matches: the same oracle, through the expiry column."""
    value, secret = stored["response_body"]
    client = staff("view", "delete")
    record = IdempotencyRecord.objects.get(key="create-ci-key")
    for guess in guesses(value, secret, "__contains"):
        query = urlencode({"response_body__contains": guess})
        response = client.post(
            f"{LIST}?{query}",
            {
                "action": "expire_selected",
                "select_across": "1",
                "index": "0",
                "_selected_action": [record.pk],
            },
        )
        assert response.status_code == 400
    record.refresh_from_db()
    assert not record.is_expired


def test_popups_cannot_show_content_as_their_value(stored: dict[str, tuple[str, str]]) -> None:
    """``_to_field`` picks the value a popup hands back to its opener, and the
    field the detail page looks its record up by."""
    client = view_only_staff()
    record = IdempotencyRecord.objects.get(key="create-ci-key")
    for field in CONTENT_FIELDS:
        assert client.get(LIST, {"_to_field": field, "_popup": "1"}).status_code == 400
        page = client.get(f"{LIST}{record.pk}/change/", {"_to_field": field, "_popup": "1"})
        assert page.status_code == 400


def test_detail_history_and_error_pages_keep_the_secrets(
    stored: dict[str, tuple[str, str]], api_secret: str
) -> None:
    client = view_only_staff()
    for key in ("create-ci-key", "k-header"):
        record = IdempotencyRecord.objects.get(key=key)
        for page in (f"{LIST}{record.pk}/change/", f"{LIST}{record.pk}/history/"):
            response = client.get(page)
            assert response.status_code == 200, page
            html = response.content.decode()
            assert api_secret not in html and HEADER_SECRET not in html, page
    # A bad value on an allowed field: Django's redirect to the bare list, and
    # its error page when the redirect's flag comes back with the bad value.
    bad = client.get(LIST, {"created_at__year": "x"})
    assert (bad.status_code, bad["Location"]) == (302, f"{LIST}?e=1")
    again = client.get(LIST, {"created_at__year": "x", "e": "1"}).content.decode()
    assert "Database error" in again and api_secret not in again


@pytest.mark.parametrize(
    ("perms", "sees"),
    [(("view",), True), (("change",), True), (("add",), False), ((), False)],
)
def test_what_each_permission_opens(stored: dict[str, tuple[str, str]], perms, sees) -> None:
    """As docs/operating.rst says: view (or change, which Django counts as
    view) opens the list and masked detail pages, nothing more."""
    client = staff(*perms)
    record = IdempotencyRecord.objects.get(key="create-ci-key")
    detail = f"{LIST}{record.pk}/change/"
    assert client.get(LIST).status_code == (200 if sees else 403)
    assert client.get(detail).status_code == (200 if sees else 403)
    assert client.post(detail, {"key": "changed"}).status_code == 403
    assert client.post(f"{LIST}{record.pk}/delete/", {"post": "yes"}).status_code == 403
    record.refresh_from_db()
    assert record.key == "create-ci-key"


# From outside, as the report's guessing script over HTTP under gunicorn:
# tests/integration/test_admin_oracle.py.
