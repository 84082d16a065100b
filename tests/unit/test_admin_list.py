"""The admin's list reads at a glance: expiry in words, the scope linked to its user."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, path

from django_idempotency.admin import IdempotencyRecordAdmin
from django_idempotency.models import IdempotencyRecord
from tests.helpers import make_record

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


# Admin sites of their own, mounted by this module's URLconf, so that no test
# changes the default site's registry (its URL patterns are built once, when
# the root URLconf is first imported: a registry changed before that import
# would leave every later test without the user's change URL).
no_user_admin = admin.AdminSite(name="no_user_admin")
no_user_admin.register(IdempotencyRecord, IdempotencyRecordAdmin)


class UserAdminWithoutChangePage(UserAdmin):
    """A user admin that is registered but has no change URL (a project that
    shows users read-only elsewhere, or removed the page)."""

    def get_urls(self) -> list[URLPattern]:
        return [url for url in super().get_urls() if not str(url.name).endswith("_change")]


user_admin_without_change_url = admin.AdminSite(name="user_admin_without_change_url")
user_admin_without_change_url.register(IdempotencyRecord, IdempotencyRecordAdmin)
user_admin_without_change_url.register(User, UserAdminWithoutChangePage)

urlpatterns = [
    path("no-user-admin/", no_user_admin.urls),
    path("no-change-url/", user_admin_without_change_url.urls),
]


@pytest.mark.parametrize("site", ["no-user-admin", "no-change-url"])
def test_a_user_scope_is_plain_text_when_the_users_change_page_cannot_be_reversed(
    admin_client: Client, settings: Any, site: str
) -> None:
    settings.ROOT_URLCONF = __name__
    make_record("k-user", scope="user:1")
    response = admin_client.get(f"/{site}/django_idempotency/idempotencyrecord/")
    assert response.status_code == 200
    row = next(r for r in rows(response.content.decode()) if "k-user" in r)
    assert "user:1" in row and "/auth/user/" not in row


def test_a_user_scope_on_a_site_that_is_not_mounted_is_plain_text() -> None:
    # Registered on a site whose URLs no URLconf includes: nothing to link to.
    site = admin.AdminSite(name="not_mounted")
    site.register(User, UserAdmin)
    model_admin = IdempotencyRecordAdmin(IdempotencyRecord, site)
    assert model_admin.scope_link(make_record("k-user", scope="user:1")) == "user:1"


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
