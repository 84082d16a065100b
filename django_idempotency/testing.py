"""Test clients that send an ``Idempotency-Key`` with every POST (docs/testing.rst)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.test import Client
from rest_framework.test import APIClient

from .conf import conf
from .errors import REQUEST_ID_HEADER
from .responses import REPLAYED_HEADER, UNSTORED_HEADERS

__all__ = ["IdempotencyAPITestClient", "IdempotencyTestClient", "assert_replayed"]

if TYPE_CHECKING:
    _ClientBase = Client
else:
    _ClientBase = object

#: The default of ``idempotency_key``: a fresh key, unless the call sends one.
FRESH: Any = object()

# What a replay differs in by design: its own request id, the replay marker,
# and the headers that are never stored.
_NOT_COMPARED = UNSTORED_HEADERS | {REQUEST_ID_HEADER.lower(), REPLAYED_HEADER.lower()}


class IdempotencyKeyMixin(_ClientBase):
    """Sends an ``Idempotency-Key`` with every POST and can retry the last one.

    ``post(..., idempotency_key="k")`` sends that key and
    ``idempotency_key=None`` sends none; by default the key given in the call's
    headers is used, or else a fresh ``uuid4``. ``last_key`` is the key that
    the last POST sent (``None`` if it sent none).
    """

    last_key: str | None = None
    last_response: Any = None
    _last_post: tuple[str, tuple[Any, ...], dict[str, Any]] | None = None

    # One signature for Client.post and APIClient.post, whose signatures differ.
    def post(  # type: ignore[override]
        self, path: str, *args: Any, idempotency_key: Any = FRESH, **kwargs: Any
    ) -> Any:
        name, meta_name = conf.IDEMPOTENCY_HEADER.lower(), conf.header_meta_name
        headers = kwargs.get("headers") or {}
        given = kwargs.get(meta_name) or next(
            (value for header, value in headers.items() if header.lower() == name), None
        )
        if idempotency_key is FRESH:
            key = given if given is not None else str(uuid.uuid4())
        else:
            key, given = idempotency_key, None
            kwargs.pop(meta_name, None)
            if headers:
                kwargs["headers"] = {h: v for h, v in headers.items() if h.lower() != name}
        if key is not None and given is None:
            kwargs[meta_name] = key
        response = super().post(path, *args, **kwargs)
        self.last_key, self.last_response = key, response
        self._last_post = (path, args, kwargs)
        return response

    def retry(self) -> Any:
        """Send the last POST again, with the same key, body and headers, and
        assert that the answer replays the first one (see :func:`assert_replayed`)."""
        if self._last_post is None:
            raise AssertionError("retry() re-sends the last POST, and there was none")
        path, args, kwargs = self._last_post
        response = super().post(path, *args, **kwargs)
        assert_replayed(response, self.last_response)
        return response


class IdempotencyAPITestClient(IdempotencyKeyMixin, APIClient):  # type: ignore[misc]
    """DRF's ``APIClient`` that sends a fresh ``Idempotency-Key`` with every POST."""


class IdempotencyTestClient(IdempotencyKeyMixin, Client):
    """Django's test ``Client`` that sends a fresh ``Idempotency-Key`` with every POST."""


def assert_replayed(response: Any, original: Any = None) -> None:
    """Assert that ``response`` is a replay (``Idempotent-Replayed: true``) and,
    given the ``original`` response, that it has the same status, body and
    stored headers."""
    assert response.get(REPLAYED_HEADER) == "true", (
        f"expected a replayed response, got {response.status_code} without "
        f"{REPLAYED_HEADER}: {response.content[:200]!r}"
    )
    if original is None:
        return
    assert response.status_code == original.status_code, (
        f"replayed status {response.status_code} != original {original.status_code}"
    )
    assert response.content == original.content, "the replayed body differs from the original"
    assert _compared_headers(response) == _compared_headers(original), (
        "the replayed headers differ from the original"
    )


def _compared_headers(response: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in response.items() if k.lower() not in _NOT_COMPARED}
