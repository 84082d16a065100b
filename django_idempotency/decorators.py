"""``@idempotent``: the only part of the app that knows about views and DRF."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, RawPostDataException
from django.utils import timezone
from rest_framework.response import Response

from . import errors, exceptions, signals
from .checks import ensure_checked
from .conf import conf, ttl_problem
from .keys import (
    InvalidBody,
    InvalidKey,
    fingerprint,
    header_meta_name,
    parse_key,
    scoped_key,
    stored_scope,
)
from .routers import guarded
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
T = TypeVar("T")

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
    _check_options(required, ttl)
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
        with guarded():  # reads go to the primary (routers.GuardedReadsRouter)
            try:
                response = view(*args, **kwargs)
            except BaseException as exc:
                _release(store, claim, request, exc)
                drf_view = _drf_view(request) if isinstance(exc, Exception) else None
                if drf_view is None:
                    raise
                # What DRF's dispatch() would do next, done here so that the
                # answer carries the request id whatever EXCEPTION_HANDLER made it.
                answer: HttpResponseBase = drf_view.handle_exception(exc)
                return _with_hints(answer, request, {})
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
    release = sync_to_async(_release, thread_sensitive=True)

    @functools.wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        request, view_self = _split(args)
        if request.method not in GUARDED_METHODS:
            return await view(*args, **kwargs)
        # A cancellation (Django 5.0+ cancels the view when its client
        # disconnects) does not stop the sync thread that makes the claim: it
        # goes on and claims the key. So wait for the claim, and release it.
        started, cancelled = await _to_the_end(start(request, required, ttl))
        if cancelled is not None:
            if isinstance(started, tuple):
                await _to_the_end(release(*started, request, cancelled))
            raise cancelled
        if started is None:
            return await view(*args, **kwargs)
        if isinstance(started, HttpResponseBase):
            return started
        store, claim = started
        with guarded():  # reads go to the primary (routers.GuardedReadsRouter)
            try:
                if store.rolls_back_view_writes:
                    # Cancelled, the view's writes roll back with the released
                    # claim, and a retry runs it cleanly.
                    response = await _drained(await view(*args, **kwargs))
                else:
                    # Released, the claim would leave the writes the view already
                    # made, and a retry would make them again. So a view that has
                    # started runs to its end, as a sync view does, and its
                    # response is kept for the retry to replay.
                    response, cancelled = await _to_the_end(_run(view, args, kwargs))
            except BaseException as exc:
                await _to_the_end(release(store, claim, request, exc))
                raise
            answer, late = await _to_the_end(
                finish(store, claim, response, request, view_self, args, kwargs)
            )
            cancelled = cancelled or late
            if cancelled is not None:
                raise cancelled
            return answer

    return wrapper


async def _run(view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return await _drained(await view(*args, **kwargs))


async def _to_the_end(
    awaitable: Awaitable[T],
) -> tuple[T, asyncio.CancelledError | None]:
    """Await ``awaitable`` to its end even if this task is cancelled meanwhile:
    its result, and the cancellation for the caller to raise once it has
    cleaned up (None if there was none). Its exceptions propagate."""
    task = asyncio.ensure_future(awaitable)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError as exc:
            if task.cancelled():  # the awaited work itself was cancelled
                raise
            cancelled = exc
            if task.done():  # it ended just as the cancellation came
                return task.result(), cancelled


def _split(args: tuple[Any, ...]) -> tuple[Any, Any]:
    """(request, view instance or None) from a view function's or method's arguments."""
    if isinstance(args[0], HttpRequest) or _is_drf_request(args[0]):
        return args[0], None
    return args[1], args[0]


def _is_drf_request(value: Any) -> bool:
    return hasattr(value, "_request") and isinstance(value._request, HttpRequest)


def _check_options(required: Any, ttl: Any) -> None:
    """Refuse, at import time, options that would fail or weaken every request."""
    if not isinstance(required, bool):
        raise ImproperlyConfigured(
            f"@idempotent(required=...) must be True or False, not {required!r}."
        )
    problem = None if ttl is None else ttl_problem(ttl, numbers=False)
    if problem is not None:
        raise ImproperlyConfigured(
            f"@idempotent(ttl=...) {problem[1]}. Write for example "
            "@idempotent(ttl=timedelta(hours=24)), or leave it out for IDEMPOTENCY_TTL."
        )


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
    ensure_checked()  # once per process: manage.py's checks do not run under gunicorn
    http_request: HttpRequest = getattr(request, "_request", request)
    raw_key = http_request.META.get(header_meta_name(conf.IDEMPOTENCY_HEADER))
    if raw_key is None:
        if required:
            return _refuse(request, errors.KEY_MISSING)
        return None
    try:
        key = parse_key(raw_key)
    except InvalidKey:
        return _refuse(request, errors.KEY_INVALID)
    scope = conf.scope_function(request)
    if scope is None:
        return _refuse(request, errors.SCOPE_UNAVAILABLE)
    try:
        body = _body(request, http_request)
    except RequestDataTooBig:
        return _refuse(request, errors.REQUEST_TOO_LARGE)

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
        return _refuse(request, errors.BODY_INVALID)

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
        _notify(signals.store_unavailable, store, request, record, exception=exc)
        return _refuse(request, errors.STORE_UNAVAILABLE)
    if isinstance(outcome, Replay):
        _notify(signals.replayed, store, request, record, status=outcome.response.status)
        return _replay(request, outcome.response)
    if isinstance(outcome, Conflict):
        _notify(signals.conflict, store, request, record)
        return _refuse(request, errors.CONFLICT)
    if isinstance(outcome, InUse):
        _notify(signals.in_use, store, request, record)
        return _refuse(request, errors.IN_USE)
    _notify(signals.claimed, store, request, record)
    return store, outcome


def _refuse(request: Any, error: errors.ErrorType) -> HttpResponseBase:
    """The answer to a request that the decorator refuses.

    In a DRF view, DRF's way: the error's exception goes through the view's
    ``handle_exception()`` and so the project's ``EXCEPTION_HANDLER``, as DRF's
    own ``Throttled`` does. The retry hints and the request id go on whatever
    that handler made of it. Elsewhere, the package's envelope.
    """
    drf_view = _drf_view(request)
    if drf_view is None:
        return errors.error_response(request, error)
    response: HttpResponseBase = drf_view.handle_exception(exceptions.exception_for(error))
    return _with_hints(response, request, errors.retry_headers(error.retryable))


def _drf_view(request: Any) -> Any:
    if not _is_drf_request(request):
        return None
    return (getattr(request, "parser_context", None) or {}).get("view")


def _with_hints(
    response: HttpResponseBase, request: Any, headers: dict[str, str]
) -> HttpResponseBase:
    for name, value in headers.items():
        response[name] = value
    response[errors.REQUEST_ID_HEADER] = errors.get_request_id(request)
    return response


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
        _release(store, claim, request, exc)
        raise
    if stored is None:
        _release(store, claim, request, status=rendered.status_code)
    else:
        try:
            store.finish(claim, stored)
        except StoreError as exc:
            # The outcome could not be kept. A store raises this only when the
            # view's effects were undone with it (the database store rolls the
            # whole transaction back), so "not processed" is the truth.
            _notify(signals.store_unavailable, store, request, claim.record, exception=exc)
            return _refuse(request, errors.STORE_UNAVAILABLE)
        _notify(signals.stored, store, request, claim.record, status=stored.status)
    if errors.REQUEST_ID_HEADER not in rendered:
        rendered[errors.REQUEST_ID_HEADER] = errors.get_request_id(request)
    return rendered


def _release(
    store: Store,
    claim: Claim,
    request: Any,
    exc: BaseException | None = None,
    status: int | None = None,
) -> None:
    store.release(claim, exc)
    _notify(signals.released, store, request, claim.record, status=status, exception=exc)


def _notify(
    outcome: signals.Outcome, store: Store, request: Any, record: RequestRecord, **info: Any
) -> None:
    """Send ``outcome``'s signal and log it: a store failure at ERROR with its
    cause, anything else at DEBUG. Nearly free when nobody listens: one check of
    the receivers (as Signal.send itself starts) and one of the log level."""
    if outcome.receivers:
        results = outcome.send_robust(
            type(store),
            request=request,
            scope=record.scope,
            key=record.key,
            method=record.method,
            path=record.path,
            **info,
        )
        for receiver, result in results:
            if isinstance(result, Exception):
                logger.error(
                    "A receiver of django_idempotency.signals.%s failed: %r",
                    outcome.name,
                    receiver,
                    exc_info=result,
                )
    if outcome is signals.store_unavailable:
        logger.error(
            "The idempotency store %s failed (%s); answered 503 to %s %s, key %r, scope %r.",
            type(store).__name__,
            info["exception"],
            record.method,
            record.path,
            record.key,
            record.scope,
            exc_info=info["exception"],
        )
    elif logger.isEnabledFor(logging.DEBUG):
        details = "".join(
            f", {name} {value!r}" for name, value in info.items() if value is not None
        )
        logger.debug(
            "Idempotency-Key %s: %s %s, key %r, scope %r%s",
            outcome.name,
            record.method,
            record.path,
            record.key,
            record.scope,
            details,
        )


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
