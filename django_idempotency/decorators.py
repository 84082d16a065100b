"""``@idempotent``: its sync and async wrappers, and the claim's begin, run, finish or release."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils import timezone

from . import encryption, errors, signals
from .checks import ensure_checked
from .conf import conf, ttl_problem
from .errors import IdempotencyError, is_drf_request
from .fingerprint import request_fingerprint
from .keys import InvalidKey, parse_key, record_key, stored_scope
from .responses import drained, kept, materialised, replay, stored_response
from .signals import logger, notify
from .stores import Claim, Conflict, InUse, Replay, RequestRecord, Store, StoreError, get_store
from .stores.database.routers import guarded

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., Any])
T = TypeVar("T")

GUARDED_METHODS = frozenset({"POST"})


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

    On a DRF viewset method or ``@action``, an ``APIView.post`` method, a
    function below ``@api_view``, or a plain Django view, sync or ``async def``.
    ``required=False`` lets requests without the header through unguarded;
    ``ttl`` overrides ``IDEMPOTENCY_TTL`` for this view. Other methods than POST
    pass through. Uses that cannot work raise ``ImproperlyConfigured`` where the
    decorator is applied (the quickstart lists them).
    """
    _check_options(required, ttl)
    if view is None:
        return functools.partial(idempotent, required=required, ttl=ttl)
    _check_decorated(view)
    if iscoroutinefunction(view):
        wrapper = _async_wrapper(view, required, ttl)
    else:
        wrapper = _sync_wrapper(view, required, ttl)

    wrapper._idempotent = True  # type: ignore[attr-defined]  # contrib.openapi reads these
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
        with guarded():  # reads go to the primary
            try:
                response = view(*args, **kwargs)
            except BaseException as exc:
                _release(store, claim, request, exc)
                if _rolled_back_by_outage(store, exc):
                    return _refuse_outage(store, request, claim, exc)
                # What DRF's dispatch() would do next, here so that the answer
                # carries the request id whatever EXCEPTION_HANDLER made it.
                answer = errors.respond(request, exc)
                if answer is None:
                    raise
                return answer
            return _finish(store, claim, response, request, view_self, args, kwargs)

    return wrapper


def _async_wrapper(
    view: Callable[..., Any], required: bool, ttl: timedelta | None
) -> Callable[..., Any]:
    # The store and the scope function may use the ORM: run them in the
    # thread that async Django gives the request's ORM calls, so the view's
    # writes share the connection that holds the database store's transaction.
    start = sync_to_async(_start, thread_sensitive=True)
    finish = sync_to_async(_finish, thread_sensitive=True)
    release = sync_to_async(_release, thread_sensitive=True)
    refuse_outage = sync_to_async(_refuse_outage, thread_sensitive=True)

    @functools.wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        request, view_self = _split(args)
        if request.method not in GUARDED_METHODS:
            return await view(*args, **kwargs)
        # A cancellation (a client that disconnects) does not stop the sync
        # thread that makes the claim: wait for the claim, and release it.
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
        with guarded():  # reads go to the primary
            try:
                # A view that has started runs to its end, as a sync view does,
                # and its response is kept for the retry: cancelled halfway, it
                # would leave writes that a store cannot undo.
                response, cancelled = await _to_the_end(_run(view, args, kwargs))
            except BaseException as exc:
                if isinstance(exc, Exception) or store.rolls_back_view_writes:
                    await _to_the_end(release(store, claim, request, exc))
                    if _rolled_back_by_outage(store, exc):
                        return await refuse_outage(store, request, claim, exc)
                else:
                    # The loop is shutting down and cancels every task, this
                    # shielded one too: the view's writes stand.
                    _abandon(store, claim, exc)
                raise
            answer, late = await _to_the_end(
                finish(store, claim, response, request, view_self, args, kwargs)
            )
            cancelled = cancelled or late
            if cancelled is not None:
                raise cancelled
            return answer

    return wrapper


def _rolled_back_by_outage(store: Store, exc: BaseException) -> bool:
    # Then nothing was done, and the answer is the store's retryable 503. On
    # other stores the view's own commits may stand: the error goes on.
    return store.rolls_back_view_writes and errors.is_database_outage(exc)


def _refuse_outage(store: Store, request: Any, claim: Claim, exc: BaseException) -> Any:
    notify(signals.store_unavailable, store, request, claim.record, exception=exc)
    return _refuse(request, errors.STORE_UNAVAILABLE)


async def _run(view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return await drained(await view(*args, **kwargs))


async def _to_the_end(
    awaitable: Awaitable[T],
) -> tuple[T, asyncio.CancelledError | None]:
    """Await ``awaitable`` to its end even if this task is cancelled meanwhile:
    its result, and the cancellation for the caller to raise after cleaning up."""
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


_NOT_A_HANDLER = (
    "@idempotent decorates a view's request handler, and {what} something other than the "
    "request (DRF's perform_create() gets a serializer). Decorate the viewset's "
    "create() instead:\n\n"
    "    @idempotent\n"
    "    def create(self, request, *args, **kwargs):\n"
    "        return super().create(request, *args, **kwargs)\n\n"
    "or an APIView's post(), or an @action with methods=['post']."
)


def _split(args: tuple[Any, ...]) -> tuple[Any, Any]:
    """(request, view instance or None) from a view function's or method's arguments."""
    if isinstance(args[0], HttpRequest) or is_drf_request(args[0]):
        return args[0], None
    if len(args) < 2 or not (isinstance(args[1], HttpRequest) or is_drf_request(args[1])):
        got = f"a {type(args[1]).__name__}" if len(args) > 1 else "no request"
        what = f"a method of {type(args[0]).__name__} got {got}:"
        raise ImproperlyConfigured(_NOT_A_HANDLER.format(what=what))
    return args[1], args[0]


def _check_options(required: Any, ttl: Any) -> None:
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
    if apps.ready and not apps.is_installed("django_idempotency"):
        # Else `manage.py check` passes and every guarded request fails.
        raise ImproperlyConfigured(
            f"@idempotent on {view.__name__}: django_idempotency is not in INSTALLED_APPS; "
            'add "django_idempotency" to INSTALLED_APPS and run `manage.py migrate`.'
        )
    if isinstance(view, type):
        raise ImproperlyConfigured(
            f"@idempotent decorates a view function or method, not the class {view.__name__}. "
            "Decorate its post() method, or a viewset's create() or @action method."
        )
    if getattr(view, "_idempotent", False):
        raise ImproperlyConfigured(f"@idempotent is applied twice to {view.__name__}.")
    if view.__name__.startswith("perform_"):
        raise ImproperlyConfigured(_NOT_A_HANDLER.format(what=f"{view.__name__}() gets"))
    view_class = getattr(view, "cls", None) or getattr(view, "view_class", None)
    if view_class is not None:
        # Above @api_view or around as_view() we would run before DRF has
        # authenticated the caller: every key would have the anonymous scope.
        name = view_class.__name__
        raise ImproperlyConfigured(
            f"@idempotent must be applied below @api_view and never around as_view() "
            f"({name}). Write:\n\n"
            f"    @api_view(['POST'])\n    @idempotent\n    def {name}(request): ...\n\n"
            "or decorate the class's post()/create() method."
        )


def _start(
    request: Any, required: bool, ttl: timedelta | None
) -> HttpResponseBase | tuple[Store, Claim] | None:
    """The store and the claim if the view may run, the answer to send instead
    if not, or None to run it unguarded (an optional key not sent)."""
    try:
        return _begin(request, required, ttl)
    except IdempotencyError as exc:
        return _refuse(request, exc.error)


def _begin(
    request: Any, required: bool, ttl: timedelta | None
) -> HttpResponseBase | tuple[Store, Claim] | None:
    ensure_checked()  # once per process: manage.py's checks do not run under gunicorn
    http_request: HttpRequest = getattr(request, "_request", request)
    raw_key = http_request.META.get(conf.header_meta_name)
    if raw_key is None:
        if required:
            raise IdempotencyError(errors.KEY_MISSING)
        return None
    try:
        key = parse_key(raw_key)
    except InvalidKey:
        raise IdempotencyError(errors.KEY_INVALID) from None
    if not _storable_path(http_request.path):
        raise IdempotencyError(errors.PATH_INVALID)
    scope = conf.scope_function(request)
    if scope is None:
        raise IdempotencyError(errors.SCOPE_UNAVAILABLE)
    fingerprint = request_fingerprint(request, http_request)
    now = timezone.now()
    record = RequestRecord(
        scope=stored_scope(scope),
        key=key,
        fingerprint=fingerprint,
        method=http_request.method or "POST",
        path=http_request.path,
        created_at=now,
        expires_at=now + (ttl if ttl is not None else conf.IDEMPOTENCY_TTL),
    )
    try:
        store = get_store()
    except StoreError as exc:  # no store, so no signal
        logger.error("%s; answered %s.", exc, errors.store_failure(exc).status)
        raise IdempotencyError(errors.store_failure(exc)) from None
    try:
        decision = store.begin(record)
    except StoreError as exc:
        notify(signals.store_unavailable, store, request, record, exception=exc)
        raise IdempotencyError(errors.store_failure(exc)) from None
    if isinstance(decision, Replay):
        stored = encryption.replayable(decision.response, record)
        if stored is None:
            raise IdempotencyError(errors.RECORD_UNREADABLE)
        notify(signals.replayed, store, request, record, status=stored.status)
        return replay(request, stored)
    if isinstance(decision, Conflict):
        notify(signals.conflict, store, request, record)
        raise IdempotencyError(errors.CONFLICT)
    if isinstance(decision, InUse):
        notify(signals.in_use, store, request, record)
        raise IdempotencyError(errors.IN_USE)
    request.idempotency_key = http_request.idempotency_key = record_key(  # type: ignore[attr-defined]
        record.scope, key, decision.anchor
    )
    notify(signals.claimed, store, request, record)
    return store, decision


def _refuse(request: Any, error: errors.ErrorType) -> HttpResponseBase:
    answer = errors.respond(request, IdempotencyError(error))
    assert answer is not None  # the package's own errors always have one
    return answer


def _storable_path(path: str) -> bool:
    # What a database refuses about the request itself is the client's error
    # (400), never a store outage: PostgreSQL's text refuses NUL, no database
    # takes a lone surrogate.
    if "\x00" in path:
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        rendered = materialised(response, request, view_self, args, kwargs)
        stored = stored_response(rendered) if kept(rendered.status_code) else None
    except BaseException as exc:
        _release(store, claim, request, exc)
        raise
    if stored is None:
        # A released 4xx: the view refused the request, so nothing was done.
        claim.may_have_acted = rendered.status_code >= 500
        _release(store, claim, request, status=rendered.status_code)
    else:
        try:
            store.finish(claim, encryption.seal(stored, claim.record.scope, claim.record.key))
        except StoreError as exc:
            # A store raises this only when the view's effects were undone with
            # the claim, so "not processed" is the truth.
            notify(signals.store_unavailable, store, request, claim.record, exception=exc)
            return _refuse(request, errors.store_failure(exc))
        notify(signals.stored, store, request, claim.record, status=stored.status)
    return errors.stamp(rendered, request)


def _release(
    store: Store,
    claim: Claim,
    request: Any,
    exc: BaseException | None = None,
    status: int | None = None,
) -> None:
    store.release(claim, exc)
    notify(signals.released, store, request, claim.record, status=status, exception=exc)


def _abandon(store: Store, claim: Claim, exc: BaseException) -> None:
    # In the event loop as it shuts down: the request's sync thread may be gone.
    store.abandon(claim)
    logger.warning(
        "Idempotency-Key %r, scope %r: the view was stopped before its end (%r) and its "
        "writes may stand, so its claim is left to lapse: a retry gets 'in use' until then.",
        claim.record.key,
        claim.record.scope,
        exc,
    )
