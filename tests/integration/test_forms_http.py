"""Forms and uploads fingerprinted by content, proven with real clients over real HTTP.

curl and requests pick a new random multipart boundary for every send, as
browsers do; Django's test client always uses the same one, so it cannot show
that an honest retry of an upload replays. With session authentication a CSRF
check reads the body before the decorator (DRF's SessionAuthentication for DRF
views, Django's CSRF protection for plain views); uploads must still be
fingerprinted by their content, not their file names. Every
scenario runs on a DRF view and on a plain Django view, with token and with
session + CSRF authentication, under gunicorn.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from tests.helpers import envelope
from tests.servers.http import Reply, Server, gunicorn
from tests.testapp.models import Widget

pytestmark = pytest.mark.slow

FILE_A = b"first file\n" + bytes(range(256)) * 40
FILE_B = FILE_A[:-1] + b"!"  # same size, one byte differs


@dataclass
class Caller:
    """How one client authenticates: a token header, or a session cookie + CSRF token."""

    auth: str
    headers: dict[str, str]
    cookies: dict[str, str]


@pytest.fixture(scope="module")
def _server(django_db_setup: None, django_db_blocker: Any) -> Iterator[Server]:
    """One gunicorn for the module, on the test database."""
    with django_db_blocker.unblock(), gunicorn(workers=2) as running:
        yield running


@pytest.fixture
def server(_server: Server, transactional_db: None) -> Server:
    return _server


@pytest.fixture(params=["token", "session"])
def caller(request: pytest.FixtureRequest, server: Server) -> Caller:
    user = User.objects.create_user("alice", password="alice-pw")
    if request.param == "token":
        token = Token.objects.create(user=user)
        return Caller("token", {"Authorization": f"Token {token.key}"}, {})
    session = requests.Session()
    session.get(server.base + "/t/login", timeout=30)
    login = session.post(
        server.base + "/t/login",
        data={"username": "alice", "password": "alice-pw"},
        headers={"X-CSRFToken": session.cookies["csrftoken"]},
        timeout=30,
    )
    assert login.status_code == 200, login.text
    cookies = session.cookies.get_dict()  # the session, and the csrftoken rotated at login
    return Caller("session", {"X-CSRFToken": cookies["csrftoken"]}, cookies)


def endpoint(view: str, caller: Caller) -> str:
    if view == "drf":
        return "/t/upload"
    return "/t/plain-upload" if caller.auth == "session" else "/t/plain-upload-token"


# Clients. A form is a list of (name, value) fields and (field, file name,
# content type, bytes) files, sent in that order.

Fields = list[tuple[str, str]]
Files = list[tuple[str, str, str, bytes]]


def send_requests(
    server: Server, path: str, caller: Caller, key: str, fields: Fields, files: Files
) -> Reply:
    response = requests.post(
        server.base + path,
        data=fields,
        files=[(field, (name, content, ctype)) for field, name, ctype, content in files] or None,
        headers={"Idempotency-Key": key, **caller.headers},
        cookies=caller.cookies,
        timeout=60,
    )
    return Reply(response.status_code, dict(response.headers), response.content)


def send_curl(
    server: Server,
    path: str,
    caller: Caller,
    key: str,
    fields: Fields,
    files: Files,
    tmp: Path,
) -> Reply:
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed (Debian package curl)"
    args = [
        curl,
        "-sS",
        "-D",
        str(tmp / "headers"),
        "-o",
        str(tmp / "body"),
        "-w",
        "%{http_code}",
        "-H",
        f"Idempotency-Key: {key}",
    ]
    for name, value in caller.headers.items():
        args += ["-H", f"{name}: {value}"]
    if caller.cookies:
        args += ["-b", "; ".join(f"{k}={v}" for k, v in caller.cookies.items())]
    if not files:
        args += [arg for name, value in fields for arg in ("--data-urlencode", f"{name}={value}")]
    for name, value in fields if files else []:
        args += ["--form-string", f"{name}={value}"]
    for i, (field, name, ctype, content) in enumerate(files):
        upload = tmp / f"upload-{i}"
        upload.write_bytes(content)
        args += ["-F", f"{field}=@{upload};filename={name};type={ctype}"]
    out = subprocess.run(
        [*args, server.base + path], capture_output=True, text=True, timeout=60, check=True
    )
    headers = {}
    for line in (tmp / "headers").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if value:
            headers[name.strip()] = value.strip()
    return Reply(int(out.stdout), headers, (tmp / "body").read_bytes())


@pytest.fixture(params=["curl", "requests"])
def send(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "curl":
        return lambda *args: send_curl(*args, tmp_path)
    return send_requests


FORM: Fields = [("name", "report"), ("tag", "a"), ("tag", "b")]
FILES: Files = [("photo", "a.jpg", "image/jpeg", FILE_A), ("photo", "b.txt", "text/plain", b"b")]


@pytest.mark.parametrize("view", ["drf", "plain"])
def test_an_upload_retried_with_a_new_boundary_replays_and_any_change_conflicts(
    server: Server, caller: Caller, send: Any, view: str
) -> None:
    path = endpoint(view, caller)
    first = send(server, path, caller, "upload-1", FORM, FILES)
    assert first.status == 201, first.body
    # The view's own parse is intact after the decorator's: every value, every file.
    assert first.json()["fields"] == [["name", ["report"]], ["tag", ["a", "b"]]]
    assert first.json()["files"] == [
        ["photo", "a.jpg", "image/jpeg", hashlib.sha256(FILE_A).hexdigest()],
        ["photo", "b.txt", "text/plain", hashlib.sha256(b"b").hexdigest()],
    ]

    again = send(server, path, caller, "upload-1", FORM, FILES)  # a new random boundary
    assert again.status == 201, again.body
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.body == first.body

    changed = {
        "other file bytes": (FORM, [("photo", "a.jpg", "image/jpeg", FILE_B), FILES[1]]),
        "other file name": (FORM, [("photo", "c.jpg", "image/jpeg", FILE_A), FILES[1]]),
        "a file less": (FORM, FILES[:1]),
        "other field value": ([("name", "other"), *FORM[1:]], FILES),
        "added repeated value": ([*FORM, ("tag", "c")], FILES),
        "removed repeated value": (FORM[:2], FILES),
        "repeated values reordered": ([FORM[0], FORM[2], FORM[1]], FILES),
    }
    for what, (fields, files) in changed.items():
        reply = send(server, path, caller, "upload-1", fields, files)
        assert reply.status == 409, (what, reply.status, reply.body)
        assert envelope(reply)["type"] == "idempotency_conflict", what
    assert Widget.objects.count() == 1, "the view ran once"


@pytest.mark.parametrize("view", ["drf", "plain"])
def test_an_urlencoded_form_is_fingerprinted_by_its_values(
    server: Server, caller: Caller, send: Any, view: str
) -> None:
    path = endpoint(view, caller)
    first = send(server, path, caller, "form-1", FORM, [])
    assert first.status == 201, first.body
    assert first.json()["fields"] == [["name", ["report"]], ["tag", ["a", "b"]]]
    # Fields in another order between themselves: the same content.
    replay = send(server, path, caller, "form-1", [*FORM[1:], FORM[0]], [])
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.body == first.body
    for fields in ([*FORM, ("tag", "c")], FORM[:2], [("name", "x"), *FORM[1:]]):
        reply = send(server, path, caller, "form-1", fields, [])
        assert (reply.status, envelope(reply)["type"]) == (409, "idempotency_conflict"), fields
    assert Widget.objects.count() == 1


def test_a_malformed_multipart_body_is_a_400_in_the_envelope(server: Server) -> None:
    user = User.objects.create_user("bob", password="bob-pw")
    token = Token.objects.create(user=user)
    for path in ("/t/upload", "/t/plain-upload-token"):
        response = requests.post(
            server.base + path,
            data=b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xyz--',
            headers={
                "Idempotency-Key": "bad",
                "Authorization": f"Token {token.key}",
                "Content-Type": "multipart/form-data",
            },  # no boundary
            timeout=30,
        )
        assert response.status_code == 400, (path, response.status_code, response.text)
        assert json.loads(response.content)["error"]["type"] == "request_body_invalid"
    assert Widget.objects.count() == 0
