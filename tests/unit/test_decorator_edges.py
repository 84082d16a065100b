"""Edges of the decorator that a real view can reach: a path that cannot be
stored, a response that fails to render, a streaming response whose closer
fails; and the public helpers of fingerprint.py and signals.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template import TemplateDoesNotExist
from django.template.response import TemplateResponse
from django.test import RequestFactory

from django_idempotency import idempotent, signals
from django_idempotency.fingerprint import (
    InvalidBody,
    canonical_body,
    canonical_json,
    fingerprint_content,
)
from django_idempotency.models import IdempotencyRecord

pytestmark = pytest.mark.django_db


def _request(alice: User, path: str = "/edge", key: str = "k") -> HttpRequest:
    request = RequestFactory().post(path, b"{}", content_type="application/json")
    request.META["HTTP_IDEMPOTENCY_KEY"] = key
    request.user = alice
    return request


def test_a_path_that_is_not_utf_8_is_refused_before_the_view_runs(alice: User) -> None:
    ran: list[str] = []

    @idempotent
    def view(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never called
        ran.append(request.path)
        return HttpResponse(status=201)

    request = _request(alice)
    request.path = "/edge/\udcff"  # a lone surrogate, as a WSGI server may decode
    response = view(request)
    assert response.status_code == 400
    assert json.loads(response.content)["error"]["type"] == "request_path_invalid"
    assert ran == []
    assert not IdempotencyRecord.objects.exists()


def test_a_response_that_fails_to_render_releases_the_key(alice: User) -> None:
    calls: list[int] = []

    @idempotent
    def view(request: HttpRequest) -> HttpResponse:
        calls.append(1)
        return TemplateResponse(request, "no/such/template.html")

    for _ in range(2):  # the retry runs again: no 409 in use, no stored answer
        with pytest.raises(TemplateDoesNotExist):
            view(_request(alice))
    assert len(calls) == 2
    assert not IdempotencyRecord.objects.exclude(state="released").exists()


class _Chunks:
    def __iter__(self) -> Any:
        yield b"a"
        yield b"b"

    def close(self) -> None:
        raise OSError("the file is gone")


def test_a_streaming_closer_that_fails_is_logged_and_the_answer_is_kept(
    alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    @idempotent
    def view(request: HttpRequest) -> StreamingHttpResponse:
        return StreamingHttpResponse(_Chunks(), status=201)

    first = view(_request(alice))
    assert first.status_code == 201
    assert first.content == b"ab"
    assert "Closing a streaming response failed" in caplog.text
    again = view(_request(alice))
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == b"ab"


def fingerprint(method: str, path: str, query: str, content_type: str, body: bytes) -> str:
    return fingerprint_content(method, path, query, canonical_body(content_type, body))


def test_fingerprint_of_a_raw_body_ignores_json_key_order_and_space() -> None:
    one = fingerprint("POST", "/p", "", "application/json", b'{"a": 1, "b": [1, 2]}')
    assert one == fingerprint(
        "POST", "/p", "", "application/json; charset=utf-8", b'{"b":[1,2],"a":1}'
    )
    assert one != fingerprint("POST", "/p", "", "application/json", b'{"a": 1, "b": [2, 1]}')
    assert one != fingerprint("POST", "/p", "", "text/plain", b'{"a": 1, "b": [1, 2]}')


def test_canonical_json_refuses_parsed_data_nested_too_deeply() -> None:
    data: Any = 1
    for _ in range(10_000):
        data = [data]
    with pytest.raises(InvalidBody, match="nested too deeply"):
        canonical_json(data)


def test_outcome_signals_are_named_in_their_repr() -> None:
    assert repr(signals.claimed) == "<Outcome claimed>"
    assert repr(signals.replayed) == "<Outcome replayed>"
