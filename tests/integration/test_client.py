"""django_idempotency.client: keys and retries, for requests and httpx (sync and async).

Over real HTTP, against a small scripted server on a free port that answers each
request as the test says (a status and headers, a dropped connection, a late
answer), and records the method and key of every request it got. The clients
against the demo itself are in tests/integration/test_sdk.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests

from django_idempotency.client import (
    AsyncIdempotentClient,
    IdempotentClient,
    IdempotentSession,
    RetryPolicy,
)

FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_retry_after=0.05)
IN_USE = {"error": {"type": "idempotency_key_in_use", "message": "busy", "request_id": "req_1"}}
CONFLICT = {"error": {"type": "idempotency_conflict", "message": "no", "request_id": "req_2"}}


@dataclass
class Answer:
    status: int = 201
    headers: dict[str, str] = field(default_factory=dict)
    body: object = field(default_factory=lambda: {"id": 1})
    drop: bool = False  # read the request, then close without answering
    late: float = 0.0  # answer only after this many seconds


@dataclass
class Script:
    answers: list[Answer] = field(default_factory=list)
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, method: str, key: str | None) -> Answer:
        with self.lock:
            self.seen.append((method, key))
            return self.answers.pop(0) if self.answers else Answer()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = self.script.next(self.command, self.headers.get("Idempotency-Key"))
        if answer.drop:
            self.close_connection = True
            return
        time.sleep(answer.late)
        body = json.dumps(answer.body).encode()
        try:
            self.send_response(answer.status)
            for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client gave up waiting

    do_GET = do_POST = do_PUT = _answer


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("ScriptedHandler", (Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class Result:
    status: int | None
    error: Exception | None = None


def call(
    kind: str,
    method: str,
    url: str,
    *,
    policy: RetryPolicy = FAST,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Result:
    """One request with the client ``kind``, as its users would make it."""
    body = {"name": "a"}
    try:
        if kind == "requests":
            with IdempotentSession(retry=policy) as session:
                response = session.request(method, url, json=body, headers=headers, timeout=timeout)
                return Result(response.status_code)
        if kind == "httpx":
            with IdempotentClient(retry=policy, timeout=timeout) as client:
                return Result(client.request(method, url, json=body, headers=headers).status_code)

        async def run() -> int:
            async with AsyncIdempotentClient(retry=policy, timeout=timeout) as client:
                return (await client.request(method, url, json=body, headers=headers)).status_code

        return Result(asyncio.run(run()))
    except (requests.RequestException, httpx.HTTPError) as exc:
        return Result(None, exc)


KINDS = ["requests", "httpx", "httpx-async"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_post_gets_a_uuid4_key_kept_across_retries(kind: str, server: Any) -> None:
    url, script = server
    script.answers = [Answer(503), Answer(drop=True), Answer(201)]
    assert call(kind, "POST", url).status == 201
    keys = [key for _, key in script.seen]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert uuid.UUID(keys[0]).version == 4


@pytest.mark.parametrize("kind", KINDS)
def test_each_post_gets_its_own_key_and_a_callers_key_is_kept(kind: str, server: Any) -> None:
    url, script = server
    call(kind, "POST", url)
    call(kind, "POST", url)
    script.answers = [Answer(500)]
    call(kind, "POST", url, headers={"Idempotency-Key": "my-custom-key-123"})
    keys = [key for _, key in script.seen]
    assert keys[0] != keys[1]
    assert keys[2:] == ["my-custom-key-123", "my-custom-key-123"]


@pytest.mark.parametrize("kind", KINDS)
def test_other_methods_get_no_key_and_no_retry(kind: str, server: Any) -> None:
    url, script = server
    script.answers = [Answer(503)]
    assert call(kind, "PUT", url).status == 503
    assert script.seen == [("PUT", None)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        (Answer(408), True),
        (Answer(429, {"Retry-After": "1"}), True),
        (Answer(500), True),
        (Answer(502), True),
        (Answer(503, {"Retry-After": "1", "X-Should-Retry": "true"}), True),
        # The in-use 409, with or without the hint header.
        (Answer(409, {"X-Should-Retry": "true", "Retry-After": "1"}, IN_USE), True),
        (Answer(409, {}, IN_USE), True),
        # A conflict and other 4xx: never.
        (Answer(409, {"X-Should-Retry": "false"}, CONFLICT), False),
        (Answer(409, {}, CONFLICT), False),
        (Answer(409, {}, "not json"), False),
        (Answer(400), False),
        (Answer(401), False),
        (Answer(403), False),
        (Answer(404), False),
        (Answer(413), False),
        (Answer(422), False),
        # What the server says wins over the status.
        (Answer(500, {"X-Should-Retry": "false"}), False),
        (Answer(400, {"X-Should-Retry": "true"}), True),
    ],
    ids=lambda value: (
        f"{value.status}-{value.headers.get('X-Should-Retry', '')}"
        if isinstance(value, Answer)
        else str(value)
    ),
)
def test_which_answers_are_retried(kind: str, answer: Answer, retried: bool, server: Any) -> None:
    url, script = server
    script.answers = [answer, Answer(201)]
    result = call(kind, "POST", url)
    assert result.status == (201 if retried else answer.status)
    assert len(script.seen) == (2 if retried else 1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_timeout_is_retried_with_the_same_key(kind: str, server: Any) -> None:
    url, script = server
    script.answers = [Answer(late=2.0), Answer(201)]
    assert call(kind, "POST", url, timeout=0.5).status == 201
    assert len(script.seen) == 2 and script.seen[0][1] == script.seen[1][1]


@pytest.mark.parametrize("kind", KINDS)
def test_retries_end_with_the_last_answer_or_error(kind: str, server: Any) -> None:
    url, script = server
    policy = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.01)
    script.answers = [Answer(503)] * 3
    assert call(kind, "POST", url, policy=policy).status == 503
    assert len(script.seen) == 3
    script.answers = [Answer(drop=True)] * 3
    result = call(kind, "POST", url, policy=policy)
    assert result.status is None and result.error is not None
    assert len(script.seen) == 6


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_sets_the_wait(kind: str, server: Any) -> None:
    url, script = server
    policy = RetryPolicy(initial_delay=5, max_delay=5, max_retry_after=30)
    script.answers = [Answer(429, {"Retry-After": "0.3"}), Answer(201)]
    started = time.monotonic()
    assert call(kind, "POST", url, policy=policy).status == 201
    assert 0.3 <= time.monotonic() - started < 5  # the answer's wait, not the backoff


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=8.0, jitter=0.25)
    for retry, full in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        waits = {policy.delay(retry) for _ in range(50)}
        assert all(full * 0.75 <= wait <= full for wait in waits)
        assert len(waits) > 1  # jittered


def test_retry_after_forms() -> None:
    policy = RetryPolicy(max_retry_after=60)
    assert policy.delay(0, {"Retry-After": "2"}) == 2
    assert policy.delay(0, {"Retry-After": "1.5"}) == 1.5
    assert policy.delay(0, {"Retry-After": "600"}) == 60  # capped
    assert policy.delay(0, {"Retry-After-Ms": "250", "Retry-After": "9"}) == 0.25
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=10), usegmt=True)
    assert 8 <= policy.delay(0, {"Retry-After": later}) <= 10
    assert 0.375 <= policy.delay(0, {"Retry-After": "soon"}) <= 0.5  # unreadable: backoff
