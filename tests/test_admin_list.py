"""The admin's list reads at a glance: expiry in words, the scope linked to its user."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client

from tests.conftest import make_record

pytestmark = pytest.mark.django_db

LIST = "/admin/django_idempotency/idempotencyrecord/"


def rows(html: str) -> list[str]:
    return re.findall(r"<tr>.*?</tr>", html.split('id="result_list"', 1)[1], re.S)


def test_expiry_is_words_not_a_boolean_icon(admin_client: Client) -> None:
    make_record("k-live", expires_in=timedelta(hours=23))
    make_record("k-old", age=timedelta(hours=30), expires_in=timedelta(hours=-6))
    html = admin_client.get(LIST).content.decode()
    # Django's boolean icons put a red cross on every live record.
    assert "icon-no" not in html and "icon-yes" not in html
    live, old = (next(r for r in rows(html) if key in r) for key in ("k-live", "k-old"))
    assert re.search(r">in (22|23)\xa0hours<", live), live
    assert re.search(r">expired 6\xa0hours ago<", old), old
    assert ">1\xa0hour ago<" in live


def test_a_user_scope_links_to_the_users_admin_page(admin_client: Client) -> None:
    user = User.objects.create_user("alice")
    make_record("k-user", scope=f"user:{user.pk}")
    make_record("k-client", scope="client:ci")
    html = admin_client.get(LIST).content.decode()
    user_row = next(r for r in rows(html) if "k-user" in r)
    client_row = next(r for r in rows(html) if "k-client" in r)
    assert f'<a href="/admin/auth/user/{user.pk}/change/">user:{user.pk}</a>' in user_row
    assert "client:ci" in client_row and "/admin/auth/" not in client_row


def test_a_user_scope_is_plain_text_when_the_user_admin_is_not_registered(
    admin_client: Client,
) -> None:
    make_record("k-user", scope="user:1")
    registered = admin.site._registry.pop(User)
    try:
        html = admin_client.get(LIST).content.decode()
    finally:
        admin.site._registry[User] = registered
    row = next(r for r in rows(html) if "k-user" in r)
    assert "user:1" in row and "/admin/auth/user/" not in row


@pytest.mark.parametrize(
    ("headers", "shown"),
    [
        ([], "3 bytes of application/octet-stream"),
        ([("Allow", "POST"), ("content-type", "image/png")], "3 bytes of image/png"),
    ],
)
def test_a_binary_body_shows_its_size_and_type(admin_client: Client, headers, shown) -> None:
    record = make_record("k-bin", headers=headers, body=b"\x00\xff\x10")
    html = admin_client.get(f"{LIST}{record.pk}/change/").content.decode()
    assert shown in html


def test_the_drill_down_leaves_other_fields_to_django() -> None:
    from django_idempotency.admin import DrillDownQuerySet
    from django_idempotency.models import IdempotencyRecord

    make_record("k1", expires_in=timedelta(hours=5))
    make_record("k2", expires_in=timedelta(days=40))
    expected = list(IdempotencyRecord.objects.datetimes("expires_at", "month"))
    assert list(DrillDownQuerySet(IdempotencyRecord).datetimes("expires_at", "month")) == expected
