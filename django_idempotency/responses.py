"""A view's response captured with its final bytes, kept as a StoredResponse, and replayed."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, HttpResponseBase
from rest_framework.response import Response

from .conf import conf
from .errors import REQUEST_ID_HEADER, stamp
from .signals import logger
from .stores import StoredResponse

REPLAYED_HEADER = "Idempotent-Replayed"

# Not kept: hop-by-hop headers (RFC 9110 section 7.6.1), ones the server
# recomputes, and ones that belong to a single exchange.
UNSTORED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "set-cookie",
        REQUEST_ID_HEADER.lower(),
        REPLAYED_HEADER.lower(),
    }
)


def kept(status: int) -> bool:
    """Whether a response of ``status`` is stored (else the claim is released)."""
    return status < 500 and status not in conf.IDEMPOTENCY_RELEASED_STATUSES


def materialised(
    response: Any, request: Any, view_self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> HttpResponseBase:
    """The response with its final bytes, rendered now, inside the claim, to be stored."""
    if getattr(response, "is_rendered", True) is False:
        if isinstance(response, Response) and getattr(response, "accepted_renderer", None) is None:
            # The DRF view class would finalize it after the handler returns;
            # doing it now is harmless when DRF does it again.
            drf_view: Any = view_self or getattr(request, "parser_context", {}).get("view")
            view_args = args[2:] if view_self is not None else args[1:]
            drf_view.finalize_response(request, response, *view_args, **kwargs)
        response.render()
    if getattr(response, "streaming", False):
        try:
            content = b"".join(response.streaming_content)
        finally:
            _close(response)
        return _buffered(response, content)
    assert isinstance(response, HttpResponseBase), (
        f"An @idempotent view must return an HttpResponse, not {type(response).__name__}"
    )
    return response


async def drained(response: Any) -> Any:
    """An async streaming response read in the event loop, for the sync store to keep."""
    if getattr(response, "streaming", False) and getattr(response, "is_async", False):
        try:
            content = b"".join([chunk async for chunk in response.streaming_content])
        finally:
            _close(response)
        return _buffered(response, content)
    return response


def _buffered(response: HttpResponseBase, content: bytes) -> HttpResponse:
    buffered = HttpResponse(content, status=response.status_code)
    for name, value in response.items():
        buffered[name] = value
    buffered.cookies = response.cookies
    return buffered


def _close(response: HttpResponseBase) -> None:
    # The server would run the closers (a FileResponse's file), but it gets the
    # buffered copy. Not response.close(): it sends request_finished, which
    # closes the connection that holds the database store's claim.
    closers = list(response._resource_closers)  # type: ignore[attr-defined]
    response._resource_closers.clear()  # type: ignore[attr-defined]
    for closer in closers:
        try:
            closer()
        except Exception:  # as HttpResponseBase.close(): not the client's failure
            logger.warning("Closing a streaming response failed", exc_info=True)


def stored_response(response: HttpResponseBase) -> StoredResponse:
    """What is kept of ``response`` for replays."""
    headers = [
        (name, value) for name, value in response.items() if name.lower() not in UNSTORED_HEADERS
    ]
    return StoredResponse(status=response.status_code, headers=headers, body=response.content)  # type: ignore[attr-defined]


def replay(request: Any, stored: StoredResponse) -> HttpResponseBase:
    """The stored response, sent again to ``request``."""
    response = HttpResponse(stored.body, status=stored.status)
    del response["Content-Type"]
    for name, value in stored.headers:
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return stamp(response, request)
