"""HTTP clients that give each POST an idempotency key and retry it safely
(docs/clients.rst). No Django here: ``requests`` and ``httpx`` are optional.

``IdempotentSession`` is a ``requests.Session``; ``IdempotentClient`` and
``AsyncIdempotentClient`` are an ``httpx.Client`` and ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
SHOULD_RETRY_HEADER = "X-Should-Retry"
IN_USE_TYPE = "idempotency_key_in_use"


def new_key() -> str:
    """A fresh idempotency key: a random UUID4."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    ``max_retries`` retries after the first attempt; the n-th waits
    ``initial_delay * 2**n`` seconds, at most ``max_delay``, less up to
    ``jitter`` of it at random (so that many clients do not retry in step),
    unless the answer's ``Retry-After`` says how long (at most
    ``max_retry_after``). ``methods`` get a key and are retried.
    """

    max_retries: int = 3
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.25
    methods: Collection[str] = frozenset({"POST"})
    header: str = IDEMPOTENCY_HEADER
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def should_retry(self, status: int, headers: Mapping[str, str], body: bytes | None) -> bool:
        """Whether an answer is worth sending the same request again.

        ``headers`` must look names up case-insensitively (as the headers of
        ``requests`` and ``httpx`` responses do). ``body`` is read only for a
        409 without ``X-Should-Retry``, to tell "still running" from a conflict.
        """
        hint = (headers.get(SHOULD_RETRY_HEADER) or "").strip().lower()
        if hint in ("true", "false"):
            return hint == "true"
        if status in (408, 429) or status >= 500:
            return True
        return status == 409 and _error_type(body) == IN_USE_TYPE

    def needs_body(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether :meth:`should_retry` needs the answer's body to decide."""
        return status == 409 and not headers.get(SHOULD_RETRY_HEADER)

    def delay(self, retry: int, headers: Mapping[str, str] | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first)."""
        retry_after = _retry_after(headers) if headers is not None else None
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        backoff = min(self.initial_delay * 2.0**retry, self.max_delay)
        return backoff * (1 - self.jitter * self.rng.random())


def _error_type(body: bytes | None) -> str | None:
    try:
        error = json.loads(body or b"")["error"]
        return str(error["type"]) if isinstance(error, dict) else None
    except (ValueError, TypeError, KeyError):
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait that the answer asks for, in seconds: ``Retry-After-Ms``, else
    ``Retry-After`` as seconds or as an HTTP date; None if absent or unreadable."""
    milliseconds = headers.get("Retry-After-Ms")
    if milliseconds:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _next_wait(
    policy: RetryPolicy, retries: int, request: Any, key: str, answer: Any
) -> float | None:
    """Seconds to wait before sending ``request`` again, or None to give up.

    ``answer`` is the response (its body read if the policy needs it) or the
    exception of a lost connection; the same rules serve all three clients.
    """
    if retries >= policy.max_retries:
        return None
    headers = None
    if not isinstance(answer, BaseException):
        status, headers = answer.status_code, answer.headers
        body = answer.content if policy.needs_body(status, headers) else None
        if not policy.should_retry(status, headers, body):
            return None
    wait = policy.delay(retries, headers)
    why = answer if headers is None else answer.status_code
    logger.info(
        "Retrying %s %s (Idempotency-Key %s) in %.2fs: %s",
        request.method,
        request.url,
        key,
        wait,
        why,
    )
    return wait


try:
    import requests
except ImportError:  # pragma: no cover - optional
    pass
else:

    class IdempotentSession(requests.Session):
        """A ``requests.Session`` whose POSTs carry an idempotency key and are retried."""

        def __init__(self, retry: RetryPolicy | None = None) -> None:
            super().__init__()
            self.retry = retry or RetryPolicy()

        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            policy = self.retry
            if (request.method or "").upper() not in policy.methods:
                return super().send(request, **kwargs)
            key = request.headers.setdefault(policy.header, new_key())
            # A generator or an open file cannot be sent a second time.
            replayable = request.body is None or isinstance(request.body, (bytes, str))
            retries = 0
            while True:
                try:
                    response = super().send(request, **kwargs)
                except (
                    requests.ConnectionError,
                    requests.Timeout,
                    requests.exceptions.ChunkedEncodingError,
                ) as exc:
                    wait = _next_wait(policy, retries, request, key, exc) if replayable else None
                    if wait is None:
                        raise
                else:
                    wait = (
                        _next_wait(policy, retries, request, key, response) if replayable else None
                    )
                    if wait is None:
                        return response
                    response.close()
                time.sleep(wait)
                retries += 1


try:
    import httpx
except ImportError:  # pragma: no cover - optional
    pass
else:

    class IdempotentClient(httpx.Client):
        """An ``httpx.Client`` whose POSTs carry an idempotency key and are retried."""

        def __init__(self, *, retry: RetryPolicy | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.retry = retry or RetryPolicy()

        def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
            policy = self.retry
            if request.method.upper() not in policy.methods:
                return super().send(request, **kwargs)
            key = request.headers.setdefault(policy.header, new_key())
            request.read()  # a body in memory can be sent again
            retries = 0
            while True:
                try:
                    response = super().send(request, **kwargs)
                except httpx.TransportError as exc:
                    if (wait := _next_wait(policy, retries, request, key, exc)) is None:
                        raise
                else:
                    if policy.needs_body(response.status_code, response.headers):
                        response.read()
                    if (wait := _next_wait(policy, retries, request, key, response)) is None:
                        return response
                    response.close()
                time.sleep(wait)
                retries += 1

    class AsyncIdempotentClient(httpx.AsyncClient):
        """An ``httpx.AsyncClient`` whose POSTs carry an idempotency key and are retried."""

        def __init__(self, *, retry: RetryPolicy | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.retry = retry or RetryPolicy()

        async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
            policy = self.retry
            if request.method.upper() not in policy.methods:
                return await super().send(request, **kwargs)
            key = request.headers.setdefault(policy.header, new_key())
            await request.aread()
            retries = 0
            while True:
                try:
                    response = await super().send(request, **kwargs)
                except httpx.TransportError as exc:
                    if (wait := _next_wait(policy, retries, request, key, exc)) is None:
                        raise
                else:
                    if policy.needs_body(response.status_code, response.headers):
                        await response.aread()
                    if (wait := _next_wait(policy, retries, request, key, response)) is None:
                        return response
                    await response.aclose()
                await asyncio.sleep(wait)
                retries += 1
