"""A database error before the decorator runs (authentication that reads the
database): an outage is answered 503 in the error envelope, to retry; a bug
(an integrity error, a missing table) stays a 500 that says not to retry."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import (
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    connection,
)
from rest_framework.authentication import BasicAuthentication
from rest_framework.test import APIClient

from tests.helpers import envelope

ALICE = "Basic YWxpY2U6YWxpY2UtcHc="  # alice:alice-pw


def post_as_alice(**client_options: Any) -> Any:
    client = APIClient(**client_options)
    client.credentials(HTTP_AUTHORIZATION=ALICE)
    return client.post("/t/widgets", {"name": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="k")


def authentication_raises(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def authenticate(*args: Any) -> Any:
        raise error

    monkeypatch.setattr(BasicAuthentication, "authenticate", authenticate)


@pytest.mark.django_db
@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_a_database_error_before_the_decorator_is_a_503_envelope(
    monkeypatch: pytest.MonkeyPatch, alice: Any, error: type[Exception]
) -> None:
    authentication_raises(
        monkeypatch, error("connection to server at 127.0.0.1 failed: Connection refused")
    )
    response = post_as_alice()
    envelope(response, 503, "service_unavailable")
    assert response["Retry-After"] == "1"


class SessionTimeout(Exception):
    sqlstate = "25P03"  # what psycopg says when PostgreSQL ends an idle transaction


@pytest.mark.django_db
def test_a_session_ended_by_the_server_is_a_503_envelope(
    monkeypatch: pytest.MonkeyPatch, alice: Any
) -> None:
    ended = InternalError("terminating connection due to idle-in-transaction timeout")
    ended.__cause__ = SessionTimeout()
    authentication_raises(monkeypatch, ended)
    envelope(post_as_alice(), 503, "service_unavailable")


@pytest.mark.django_db
@pytest.mark.parametrize("error", [IntegrityError, InternalError])
def test_other_database_errors_stay_500s(
    monkeypatch: pytest.MonkeyPatch, alice: Any, error: type[Exception]
) -> None:
    authentication_raises(monkeypatch, error("a bug, not an outage"))
    with pytest.raises(error):
        post_as_alice()


# Transactional, and the table renamed back: MySQL and MariaDB commit DDL, so
# a rename left to the test's rollback would outlive the test there.
@pytest.mark.django_db(transaction=True)
def test_a_missing_table_is_no_outage(alice: Any) -> None:
    # SQLite says "no such table" with an OperationalError, the class of its
    # outages too: still a 500, never "retry" (PostgreSQL: a ProgrammingError;
    # MySQL and MariaDB: error 1146).
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {quote('auth_user')} RENAME TO {quote('auth_user_gone')}")
    try:
        # Answered by the package's handler500, which says "do not retry".
        response = post_as_alice(raise_request_exception=False)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {quote('auth_user_gone')} RENAME TO {quote('auth_user')}")
    envelope(response, 500, "api_error")
    assert (response["X-Should-Retry"], response.get("Retry-After")) == ("false", None)
