"""The guessing attack on the admin, as a script would run it: a staff user who
may only view records logs in over HTTP and tries every next character of a
secret stored in a response body, through each lookup Django would accept.
Every guess gets the same refusal (tests/unit/test_admin_leaks.py proves each
refusal in-process)."""

from __future__ import annotations

import re

import requests
from django.contrib.auth.models import Permission, User

from django_idempotency.models import IdempotencyRecord
from testproject.api.models import Account, ApiKey
from tests.servers.http import gunicorn

LIST = "/admin/django_idempotency/idempotencyrecord/"


URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_the_guessing_script_recovers_nothing_over_http(transactional_db: None) -> None:
    owner = User.objects.create_user("owner")
    _, first = ApiKey.issue(Account.objects.create(user=owner, credits_cents=1000))
    viewer = User.objects.create_user("viewer", password="viewer-pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_idempotencyrecord"))

    with gunicorn(workers=1) as server:
        created = requests.post(
            server.base + "/v1/api_keys",
            json={"name": "ci"},
            headers={"Authorization": f"Bearer {first}", "Idempotency-Key": "create-ci-key"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        account = requests.get(
            server.base + "/v1/account", headers={"Authorization": f"Bearer {secret}"}, timeout=30
        )
        assert account.status_code == 200  # a live credential

        staff_session = requests.Session()
        login_page = staff_session.get(server.base + "/admin/login/", timeout=30)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text)
        assert token is not None
        login = staff_session.post(
            server.base + "/admin/login/?next=" + LIST,
            data={"username": "viewer", "password": "viewer-pw", "csrfmiddlewaretoken": token[1]},
            timeout=30,
        )
        assert login.status_code == 200 and login.url.endswith(LIST), login.url
        detail = staff_session.get(
            server.base + LIST + f"{IdempotencyRecord.objects.get().pk}/change/", timeout=30
        )
        assert detail.status_code == 200 and "********" in detail.text
        assert secret not in detail.text

        def ask(params: dict[str, str]) -> tuple[int, str | tuple[str, ...]]:
            """What a guess learns: the error, or the keys listed."""
            response = staff_session.get(server.base + LIST, params=params, timeout=30)
            assert secret not in response.text
            if response.status_code != 200:
                return response.status_code, response.json()["error"]["type"]
            return 200, tuple(
                re.findall(r'<th class="field-key"><a [^>]*>([^<]*)</a>', response.text)
            )

        assert ask({"key": "create-ci-key"}) == (200, ("create-ci-key",))
        assert ask({"key": "other"}) == (200, ())

        # The next character after a known start, tried with each candidate:
        # the report's script, on the stored body where the secret is.
        body = bytes(IdempotencyRecord.objects.get().response_body).decode()
        known = body[: body.index(secret) + 12]
        for lookup, guess in (
            ("__regex", lambda c: re.escape(known[-22:] + c)),
            ("__contains", lambda c: known[-22:] + c),
            ("__startswith", lambda c: known + c),
            ("__gt", lambda c: known + c),
        ):
            answers = {ask({"response_body" + lookup: guess(c)}) for c in URLSAFE}
            assert answers == {(400, "invalid_request")}, lookup
