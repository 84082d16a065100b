"""``@idempotent``: the only part of the app that knows about views and DRF."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, RawPostDataException
from django.utils import timezone
from rest_framework.response import Response

from . import errors
from .conf import conf
from .keys import (
    InvalidBody,
    InvalidKey,
    fingerprint,
    header_meta_name,
    parse_key,
    scoped_key,
    stored_scope,
)
from .stores import (
    Claim,
    Conflict,
    InUse,
    Replay,
    RequestRecord,
    Store,
    StoredResponse,
    StoreError,
    get_store,
)

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., Any])

logger = logging.getLogger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"
GUARDED_METHODS = frozenset({"POST"})

# Not kept with a stored response: hop-by-hop headers (RFC 9110 section 7.6.1),
# ones the server recomputes, and ones that belong to a single exchange.
_UNSTORED_HEADERS = frozenset(
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
        errors.REQUEST_ID_HEADER.lower(),
        REPLAYED_HEADER.lower(),
    }
)


@overload
def idempotent(view: ViewFunc) -> ViewFunc: ...


@overload
def idempotent(
    view: None = None, *, required: bool = True, ttl: timedelta | None = None
) -> Callable[[ViewFunc], ViewFunc]: ...


def idempotent(
    view: ViewFunc | None = None,
    *,
    required: bool = True,
    ttl: timedelta | None = None,
) -> ViewFunc | Callable[[ViewFunc], ViewFunc]:
    """Make a view's POST requests safe to retry with an ``Idempotency-Key`` header.

    Use it bare or with options, on a DRF viewset method or ``@action``, an
    ``APIView.post`` method, a function below ``@api_view``, or a plain Django
    view, sync or ``async def``::

        class JobViewSet(viewsets.ModelViewSet):
            @idempotent
            def create(self, request, *args, **kwargs): ...

    ``required=False`` lets requests without the header through unguarded;
    ``ttl`` overrides ``IDEMPOTENCY_TTL`` for this view. Methods other than POST
    pass through untouched.
    """
    if view is None:
        return functools.partial(idempotent, required=required, ttl=ttl)
    _check_decorated(view)
    if iscoroutinefunction(view):
        wrapper = _async_wrapper(view, required, ttl)
    else:
        wrapper = _sync_wrapper(view, required, ttl)

    wrapper._idempotent = True  # type: ignore[attr-defined]
    # Read by the OpenAPI extension (django_idempotency.openapi) to document the view.
    wrapper._idempotent_required = required  # type: ignore[attr-defined]
    wrapper._idempotent_ttl = ttl  # type: ignore[attr-defined]
    return wrapper


def _sync_wrapper(
    view: Callable[..., Any], required: bool, ttl: timedelta | None
) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request, view_self = _split(args)
        if request.method not in GUARDED_METHODS:
            return view(*args, **kwargs)
        started = _start(request, required, ttl)
        if started is None:
            return view(*args, **kwargs)
        if isinstance(started, HttpResponseBase):
            return started
        store, claim = started
        try:
            response = view(*args, **kwargs)
        except BaseException as exc:
            store.release(claim, exc)
            raise
        return _finish(store, claim, response, request, view_self, args, kwargs)

    return wrapper


def _async_wrapper(
    view: Callable[..., Any], required: bool, ttl: timedelta | None
) -> Callable[..., Any]:
    # The scope function and the store are sync code that may use the ORM. In
    # async Django every ORM call runs in the thread that sync_to_async(
    # thread_sensitive=True) picks, one per request under ASGI; running the
    # store there too puts the view's writes on the connection that holds the
    # database store's transaction, so they commit or roll back with the claim.
    start = sync_to_async(_start, thread_sensitive=True)
    finish = sync_to_async(_finish, thread_sensitive=True)

    @functools.wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        request, view_self = _split(args)
        if request.method not in GUARDED_METHODS:
            return await view(*args, **kwargs)
        started = await start(request, required, ttl)
        if started is None:
            return await view(*args, **kwargs)
        if isinstance(started, HttpResponseBase):
            return started
        store, claim = started
        try:
            response = await _drained(await view(*args, **kwargs))
        except BaseException as exc:
            # Also on cancellation (the client went away): the claim is released.
            await sync_to_async(store.release, thread_sensitive=True)(claim, exc)
            raise
        return await finish(store, claim, response, request, view_self, args, kwargs)

    return wrapper


def _split(args: tuple[Any, ...]) -> tuple[Any, Any]:
    """(request, view instance or None) from a view function's or method's arguments."""
    if isinstance(args[0], HttpRequest) or _is_drf_request(args[0]):
        return args[0], None
    return args[1], args[0]


def _is_drf_request(value: Any) -> bool:
    return hasattr(value, "_request") and isinstance(value._request, HttpRequest)


def _check_decorated(view: Any) -> None:
    """Refuse, at import time, the uses that cannot work."""
    if isinstance(view, type):
        raise ImproperlyConfigured(
            f"@idempotent decorates a view function or method, not the class {view.__name__}. "
            "Decorate its post() method, or a viewset's create() or @action method."
        )
    if getattr(view, "_idempotent", False):
        raise ImproperlyConfigured(f"@idempotent is applied twice to {view.__name__}.")
    view_class = getattr(view, "cls", None) or getattr(view, "view_class", None)
    if view_class is not None:
        # The result of @api_view or as_view(): we would run before DRF has
        # authenticated the caller, so every key would have the anonymous scope.
        name = getattr(view, "__name__", "view")
        raise ImproperlyConfigured(
            f"@idempotent must be applied below @api_view and never around as_view() "
            f"({name}). Write:\n\n"
            f"    @api_view(['POST'])\n    @idempotent\n    def {name}(request): ...\n\n"
            "or decorate the class's post()/create() method."
        )


def _start(
    request: Any, required: bool, ttl: timedelta | None
) -> HttpResponseBase | tuple[Store, Claim] | None:
    """Claim the request's key: the store and the claim if the view may run, the
    response to send instead if not, or None to run it unguarded (no key sent to
    a view where it is optional)."""
    http_request: HttpRequest = getattr(request, "_request", request)
    raw_key = http_request.META.get(header_meta_name(conf.IDEMPOTENCY_HEADER))
    if raw_key is None:
        if required:
            return errors.error_response(request, errors.KEY_MISSING)
        return None
    try:
        key = parse_key(raw_key)
    except InvalidKey:
        return errors.error_response(request, errors.KEY_INVALID)
    if not _storable_path(http_request.path):
        return errors.error_response(request, errors.PATH_INVALID)
    scope = conf.scope_function(request)
    if scope is None:
        return errors.error_response(request, errors.SCOPE_UNAVAILABLE)
    try:
        body = _body(request, http_request)
    except RequestDataTooBig:
        return errors.error_response(request, errors.REQUEST_TOO_LARGE)

    method = http_request.method or "POST"
    try:
        request_fingerprint = fingerprint(
            method,
            http_request.path,
            http_request.META.get("QUERY_STRING", ""),
            http_request.META.get("CONTENT_TYPE", ""),
            body,
        )
    except InvalidBody:
        return errors.error_response(request, errors.BODY_INVALID)

    now = timezone.now()
    record = RequestRecord(
        scope=stored_scope(scope),
        key=key,
        fingerprint=request_fingerprint,
        method=method,
        path=http_request.path,
        created_at=now,
        expires_at=now + (ttl if ttl is not None else conf.IDEMPOTENCY_TTL),
    )
    request.idempotency_key = http_request.idempotency_key = scoped_key(record.scope, key)  # type: ignore[attr-defined]

    store = get_store()
    try:
        outcome = store.begin(record)
    except StoreError as exc:
        return _store_unavailable(request, exc)
    if isinstance(outcome, Replay):
        return _replay(request, outcome.response)
    if isinstance(outcome, Conflict):
        return errors.error_response(request, errors.CONFLICT)
    if isinstance(outcome, InUse):
        return errors.error_response(
            request, errors.IN_USE, headers={"Retry-After": str(conf.IDEMPOTENCY_RETRY_AFTER)}
        )
    return store, outcome


def _storable_path(path: str) -> bool:
    """Whether the store can keep ``path``: what a database refuses about the
    request itself is the client's error (a 400), never a store outage (503).

    PostgreSQL's text columns refuse NUL (``/v1/jobs/%00/cancel``), and no
    database takes a lone surrogate. The path column has no length limit and
    the method is always POST, so nothing else here can overflow a column; the
    key and the scope are checked (or hashed) where they are read.
    """
    if "\x00" in path:
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _store_unavailable(request: Any, exc: StoreError) -> HttpResponseBase:
    # The 503 alone tells an operator nothing: the cause goes to the log.
    logger.error(
        "Idempotency store unavailable (%s %s): %s",
        getattr(request, "method", "?"),
        getattr(request, "path", "?"),
        exc,
        exc_info=exc,
    )
    return errors.error_response(request, errors.STORE_UNAVAILABLE)


def _finish(
    store: Store,
    claim: Claim,
    response: Any,
    request: Any,
    view_self: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> HttpResponseBase:
    """Keep or release the claim by what the view answered; return the answer."""
    try:
        rendered = _materialised(response, request, view_self, args, kwargs)
        kept = _keeps(rendered.status_code)
        stored = _to_stored(rendered) if kept else None
    except BaseException as exc:
        store.release(claim, exc)
        raise
    if stored is None:
        store.release(claim)
    else:
        try:
            store.finish(claim, stored)
        except StoreError as exc:
            # The outcome could not be kept. A store raises this only when the
            # view's effects were undone with it (the database store rolls the
            # whole transaction back), so "not processed" is the truth.
            return _store_unavailable(request, exc)
    if errors.REQUEST_ID_HEADER not in rendered:
        rendered[errors.REQUEST_ID_HEADER] = errors.get_request_id(request)
    return rendered


def _body(request: Any, http_request: HttpRequest) -> bytes:
    try:
        return http_request.body
    except RawPostDataException:
        # Something (an authentication or permission class) already parsed the
        # body from the stream, so the bytes are gone: use what it parsed.
        return json.dumps(
            getattr(request, "data", None) or http_request.POST, sort_keys=True, default=str
        ).encode()


def _keeps(status: int) -> bool:
    return status < 500 and status not in conf.IDEMPOTENCY_RELEASED_STATUSES


def _materialised(
    response: Any, request: Any, view_self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> HttpResponseBase:
    """The response with its final bytes, rendered now so they can be stored."""
    if getattr(response, "is_rendered", True) is False:
        if isinstance(response, Response) and getattr(response, "accepted_renderer", None) is None:
            # A DRF Response: the view class renders it after the handler returns;
            # do what it would do now, inside the claim. DRF does it again
            # later, harmlessly.
            drf_view: Any = view_self or getattr(request, "parser_context", {}).get("view")
            view_args = args[2:] if view_self is not None else args[1:]
            drf_view.finalize_response(request, response, *view_args, **kwargs)
        response.render()
    if getattr(response, "streaming", False):
        return _buffered(response, b"".join(response.streaming_content))
    assert isinstance(response, HttpResponseBase), (
        f"An @idempotent view must return an HttpResponse, not {type(response).__name__}"
    )
    return response


async def _drained(response: Any) -> Any:
    """Read an async streaming response here, in the event loop, so that the
    store's sync code can keep its bytes."""
    if getattr(response, "streaming", False) and getattr(response, "is_async", False):
        return _buffered(response, b"".join([chunk async for chunk in response.streaming_content]))
    return response


def _buffered(response: HttpResponseBase, content: bytes) -> HttpResponse:
    buffered = HttpResponse(content, status=response.status_code)
    for name, value in response.items():
        buffered[name] = value
    return buffered


def _to_stored(response: HttpResponseBase) -> StoredResponse:
    headers = [
        (name, value) for name, value in response.items() if name.lower() not in _UNSTORED_HEADERS
    ]
    return StoredResponse(status=response.status_code, headers=headers, body=response.content)  # type: ignore[attr-defined]


def _replay(request: Any, stored: StoredResponse) -> HttpResponse:
    response = HttpResponse(stored.body, status=stored.status)
    del response["Content-Type"]
    for name, value in stored.headers:
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    response[errors.REQUEST_ID_HEADER] = errors.get_request_id(request)
    return response
