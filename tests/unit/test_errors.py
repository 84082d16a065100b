"""One envelope, one request id, and retry hints on every error answer.

The docs' statements about errors (docs/errors.rst, docs/clients.rst), each a test:
the package's errors reach the project's own DRF ``EXCEPTION_HANDLER``; the
package's handler renders every DRF error in the envelope; every response of a
guarded view carries ``Request-Id``; every error says whether a retry with the
same key can succeed (``X-Should-Retry``, and ``Retry-After`` when it can).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import exception_handler as drf_exception_handler

from django_idempotency import errors
from django_idempotency.stores.base import InUse, StoreError
from django_idempotency.stores.database import DatabaseStore
from tests.helpers import envelope, post
from tests.testapp.models import Widget

pytestmark = pytest.mark.django_db

REQUEST_ID = re.compile(r"^req_[0-9A-HJKMNP-TV-Z]{26}$")
# Every guarded shape of view: a viewset's create, an APIView.post, an
# @api_view function (DRF), and a plain Django view.
DRF_PATHS = ["/t/widgets", "/t/apiview", "/t/function"]
ALL_PATHS = [*DRF_PATHS, "/t/plain"]


@pytest.fixture
def client_alice(client_alice: APIClient, alice: User) -> APIClient:
    """Alice, for DRF views and (by her session) for plain Django views."""
    client_alice.force_login(alice)
    return client_alice


def hints(response: Any) -> tuple[str | None, str | None]:
    return response.get("X-Should-Retry"), response.get("Retry-After")


def in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DatabaseStore, "begin", lambda self, record: InUse())


def store_down(monkeypatch: pytest.MonkeyPatch) -> None:
    def begin(self: DatabaseStore, record: Any) -> Any:
        raise StoreError("down")

    monkeypatch.setattr(DatabaseStore, "begin", begin)


# -- retry hints -------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_PATHS)
def test_in_use_and_store_unavailable_say_retry_with_retry_after(
    client_alice: APIClient, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    in_use(monkeypatch)
    busy = post(client_alice, path, {"name": "a"})
    assert busy.status_code == 409
    assert envelope(busy)["type"] == "idempotency_key_in_use"
    assert hints(busy) == ("true", "1")

    store_down(monkeypatch)
    down = post(client_alice, path, {"name": "a"})
    assert down.status_code == 503
    assert envelope(down)["type"] == "idempotency_store_unavailable"
    assert hints(down) == ("true", "1")
    assert Widget.objects.count() == 0


@pytest.mark.parametrize("path", ALL_PATHS)
def test_refusals_that_a_retry_cannot_change_say_do_not_retry(
    client_alice: APIClient, path: str
) -> None:
    assert post(client_alice, path, {"name": "a"}, key="k").status_code in (200, 201)
    answers = {
        "idempotency_conflict": post(client_alice, path, {"name": "b"}, key="k"),
        "idempotency_key_missing": post(client_alice, path, {"name": "a"}, key=None)
        if path != "/t/apiview"  # its key is optional
        else None,
        "idempotency_key_invalid": post(client_alice, path, {"name": "a"}, key=""),
        "idempotency_scope_unavailable": post(APIClient(), path, {"name": "a"}, key="k")
        if path == "/t/plain"  # DRF's IsAuthenticated refuses anonymous callers first
        else None,
    }
    for type_, response in answers.items():
        if response is None:
            continue
        assert envelope(response)["type"] == type_
        assert hints(response) == ("false", None), type_


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
@pytest.mark.parametrize("path", ALL_PATHS)
def test_too_large_says_do_not_retry(client_alice: APIClient, path: str) -> None:
    response = post(client_alice, path, {"name": "x" * 200})
    assert response.status_code == 413
    assert envelope(response)["type"] == "request_too_large"
    assert hints(response) == ("false", None)


@override_settings(IDEMPOTENCY_SHOULD_RETRY_HEADERS=["X-Should-Retry", "Stripe-Should-Retry"])
def test_the_hint_headers_are_a_setting(
    client_alice: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    post(client_alice, "/t/widgets", {"name": "a"})
    conflict = post(client_alice, "/t/widgets", {"name": "b"})
    assert conflict["Stripe-Should-Retry"] == conflict["X-Should-Retry"] == "false"
    in_use(monkeypatch)
    busy = post(client_alice, "/t/plain", {})
    assert busy["Stripe-Should-Retry"] == busy["X-Should-Retry"] == "true"


# -- every error in one envelope, through the package's exception handler ------


def test_every_drf_error_of_a_guarded_view_uses_the_envelope(client_alice: APIClient) -> None:
    invalid = post(client_alice, "/t/widgets", {})
    assert invalid.status_code == 400
    error = envelope(invalid)
    assert error["type"] == "invalid_request"
    assert error["message"] == "name: This field is required."
    assert error["fields"] == {"name": ["This field is required."]}
    assert hints(invalid) == ("false", None)

    missing = post(client_alice, "/t/widgets/999999/rename", {"name": "b"}, key="nf")
    assert missing.status_code == 404
    assert envelope(missing)["type"] == "not_found"

    raised = post(client_alice, "/t/apiview", {"outcome": "invalid"}, key="invalid")
    assert raised.status_code == 400
    assert envelope(raised)["fields"] == {"name": ["bad"]}


def test_authentication_errors_use_the_envelope(db: None) -> None:
    anonymous = post(APIClient(), "/t/widgets", {"name": "a"})
    assert anonymous.status_code == 401
    assert envelope(anonymous)["type"] == "authentication_required"
    User.objects.create_user("carol", password="right")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic Y2Fyb2w6d3Jvbmc=")  # carol:wrong
    wrong = post(client, "/t/widgets", {"name": "a"})
    assert wrong.status_code == 401
    assert envelope(wrong)["type"] == "authentication_required"


def test_an_api_exception_of_a_project_is_typed_by_its_code(db: None) -> None:
    class InsufficientCredits(APIException):
        status_code = 402
        default_code = "insufficient_credits"
        default_detail = "Not enough credits"

    request = APIClient().get("/t/widgets").wsgi_request
    response = errors.exception_handler(InsufficientCredits(), {"request": request})
    assert response is not None
    assert response.status_code == 402
    assert response.data["error"]["type"] == "insufficient_credits"
    assert response.data["error"]["message"] == "Not enough credits"
    assert response["X-Should-Retry"] == "false"


@pytest.mark.usefixtures("own_handler")
def test_plain_django_views_keep_the_built_in_envelope(client_alice: APIClient) -> None:
    response = post(client_alice, "/t/plain", {}, key="")
    assert envelope(response)["type"] == "idempotency_key_invalid"
    assert seen == []


def test_unrouted_urls_use_the_envelope(client_alice: APIClient) -> None:
    response = client_alice.get("/no/such/page")
    assert response.status_code == 404
    assert envelope(response)["type"] == "not_found"


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
def test_a_too_large_body_on_an_unguarded_view_uses_the_envelope(db: None) -> None:
    # Django's RequestDataTooBig, answered by handler400: 413, not a bare 400.
    response = Client().post("/t/login", {"username": "x" * 200, "password": "p"})
    assert response.status_code == 413
    assert envelope(response)["type"] == "request_too_large"
    assert hints(response) == ("false", None)


@override_settings(ALLOWED_HOSTS=["testserver"])
def test_a_suspicious_request_uses_the_envelope(db: None) -> None:
    # A Host that ALLOWED_HOSTS refuses: Django's DisallowedHost, through handler400.
    response = Client().get("/t/login", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert envelope(response)["type"] == "invalid_request"
    assert hints(response) == ("false", None)


# -- DRF's default EXCEPTION_HANDLER (a project that set none) -------------------


@pytest.fixture
def drf_default_handler(settings: Any) -> None:
    """REST_FRAMEWORK without EXCEPTION_HANDLER: DRF's own handler, as on a
    fresh project (DRF reloads its settings on setting_changed)."""
    from rest_framework.settings import api_settings
    from rest_framework.views import exception_handler

    settings.REST_FRAMEWORK = {
        name: value
        for name, value in settings.REST_FRAMEWORK.items()
        if name != "EXCEPTION_HANDLER"
    }
    assert api_settings.EXCEPTION_HANDLER is exception_handler


@pytest.mark.usefixtures("drf_default_handler")
@pytest.mark.parametrize("path", DRF_PATHS)
def test_with_drfs_default_handler_the_package_errors_use_the_envelope(
    client_alice: APIClient, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    assert post(client_alice, path, {"name": "a"}, key="k").status_code == 201
    conflict = post(client_alice, path, {"name": "b"}, key="k")
    assert conflict.status_code == 409
    assert envelope(conflict) == {
        "type": "idempotency_conflict",
        "message": "A different request was already made with this idempotency key",
        "request_id": conflict["Request-Id"],
    }
    assert hints(conflict) == ("false", None)
    assert envelope(post(client_alice, path, {"name": "a"}, key=""))["type"] == (
        "idempotency_key_invalid"
    )

    in_use(monkeypatch)
    busy = post(client_alice, path, {"name": "a"}, key="k2")
    assert (busy.status_code, envelope(busy)["type"]) == (409, "idempotency_key_in_use")
    assert hints(busy) == ("true", "1")

    store_down(monkeypatch)
    down = post(client_alice, path, {"name": "a"}, key="k3")
    assert (down.status_code, envelope(down)["type"]) == (503, "idempotency_store_unavailable")
    assert hints(down) == ("true", "1")


@pytest.mark.usefixtures("drf_default_handler")
def test_with_drfs_default_handler_the_views_own_errors_stay_drfs(
    client_alice: APIClient,
) -> None:
    # Only the package's errors change format: the project's keep the one it chose.
    invalid = post(client_alice, "/t/widgets", {}, key="bad-body")
    assert invalid.status_code == 400
    assert json.loads(invalid.content) == {"name": ["This field is required."]}
    assert REQUEST_ID.match(invalid["Request-Id"])


@pytest.mark.usefixtures("drf_default_handler")
def test_with_drfs_default_handler_a_views_own_handle_exception_still_runs(
    client_alice: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.testapp.views import WidgetViewSet

    handled: list[str] = []
    original = WidgetViewSet.handle_exception

    def handle_exception(self: Any, exc: Exception) -> Any:
        handled.append(str(exc.get_codes()) if isinstance(exc, APIException) else "")
        return original(self, exc)

    monkeypatch.setattr(WidgetViewSet, "handle_exception", handle_exception)
    response = post(client_alice, "/t/widgets", {"name": "a"}, key="")
    assert envelope(response)["type"] == "idempotency_key_invalid"
    assert handled == ["idempotency_key_invalid"]


# -- a project's own EXCEPTION_HANDLER -----------------------------------------

seen: list[Any] = []


def project_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """A project's own error format, which builds a new Response (so nothing of
    DRF's headers survives unless the package adds them afterwards)."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    seen.append(exc.error if isinstance(exc, errors.IdempotencyError) else type(exc))
    code = exc.get_codes() if isinstance(exc, APIException) else "error"
    return Response({"failure": {"code": code}}, status=response.status_code)


@pytest.fixture
def own_handler() -> Any:
    seen.clear()
    with override_settings(REST_FRAMEWORK={"EXCEPTION_HANDLER": f"{__name__}.project_handler"}):
        yield
    seen.clear()


@pytest.mark.usefixtures("own_handler")
@pytest.mark.parametrize("path", DRF_PATHS)
def test_the_package_errors_reach_the_projects_exception_handler(
    client_alice: APIClient, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    assert post(client_alice, path, {"name": "a"}, key="k").status_code == 201
    conflict = post(client_alice, path, {"name": "b"}, key="k")
    assert conflict.status_code == 409
    assert json.loads(conflict.content) == {"failure": {"code": "idempotency_conflict"}}
    assert hints(conflict) == ("false", None)
    assert REQUEST_ID.match(conflict["Request-Id"])

    invalid = post(client_alice, path, {"name": "a"}, key="")
    assert json.loads(invalid.content) == {"failure": {"code": "idempotency_key_invalid"}}

    in_use(monkeypatch)
    busy = post(client_alice, path, {"name": "a"}, key="k2")
    assert busy.status_code == 409
    assert json.loads(busy.content) == {"failure": {"code": "idempotency_key_in_use"}}
    assert hints(busy) == ("true", "1")
    assert REQUEST_ID.match(busy["Request-Id"])

    store_down(monkeypatch)
    down = post(client_alice, path, {"name": "a"}, key="k3")
    assert down.status_code == 503
    assert hints(down) == ("true", "1")
    assert seen == [
        errors.CONFLICT,
        errors.KEY_INVALID,
        errors.IN_USE,
        errors.STORE_UNAVAILABLE,
    ]


@pytest.mark.usefixtures("own_handler")
def test_every_response_of_a_guarded_view_carries_request_id_whatever_the_handler(
    client_alice: APIClient,
) -> None:
    responses = [
        post(client_alice, "/t/widgets", {"name": "a"}),  # created
        post(client_alice, "/t/widgets", {"name": "a"}),  # replayed
        post(client_alice, "/t/widgets", {}, key="bad-body"),  # ValidationError in the view
        post(client_alice, "/t/widgets/999999/rename", {"name": "b"}, key="nf"),  # NotFound
        post(client_alice, "/t/apiview", {"outcome": "invalid"}, key="invalid"),
        post(client_alice, "/t/apiview", {"outcome": "404"}, key="404"),  # answered, not raised
        post(client_alice, "/t/function", {}, key=None),  # refused by the decorator
    ]
    assert [r.status_code for r in responses] == [201, 201, 400, 404, 400, 404, 400]
    for response in responses:
        assert REQUEST_ID.match(response["Request-Id"]), response.content
    assert json.loads(responses[2].content) == {"failure": {"code": {"name": ["required"]}}}


@pytest.mark.parametrize(
    ("millis", "random"),
    [
        (0, bytes(10)),
        (2**48 - 1, b"\xff" * 10),
        (1_764_460_800_000, bytes(range(10))),
        (1_764_460_800_123, bytes(range(246, 256))),
    ],
)
def test_a_ulid_is_its_128_bits_in_crockford_base32(
    monkeypatch: pytest.MonkeyPatch, millis: int, random: bytes
) -> None:
    """new_ulid() encodes with base64.b32encode: the same 26 digits as the
    ULID spec's digit-by-digit encoding (the first digit carries 3 bits)."""
    monkeypatch.setattr(errors.time, "time_ns", lambda: millis * 1_000_000 + 999_999)
    monkeypatch.setattr(errors.os, "urandom", lambda n: random)
    value = millis << 80 | int.from_bytes(random, "big")
    expected = "".join(errors._CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))
    assert errors.new_ulid() == expected
    assert re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", expected)
