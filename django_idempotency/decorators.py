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
from django.apps import apps
from django.conf import settings
from django.core.exceptions import (
    BadRequest,
    ImproperlyConfigured,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, HttpResponse, HttpResponseBase, RawPostDataException
from django.http.multipartparser import MultiPartParserError
from django.utils import timezone
from rest_framework.response import Response

from . import errors, exceptions, signals
from .checks import ensure_checked
from .conf import conf, ttl_problem
from .keys import (
    FormFile,
    InvalidBody,
    InvalidKey,
    canonical_body,
    canonical_form,
    canonical_json,
    file_sha256,
    fingerprint_content,
    is_json,
    media_type_of,
    parse_key,
    record_key,
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
from .stores.database.routers import guarded

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

    Uses that cannot work raise ``ImproperlyConfigured`` where the decorator is
    applied: on a class, twice, above ``@api_view`` or around ``as_view()``, on
    a ``perform_*`` method (it gets a serializer: decorate ``create()``), or
    without ``django_idempotency`` in ``INSTALLED_APPS``; a method that is
    called without the request raises it on its first call. The system check
    ``django_idempotency.W050`` warns where it decorates a handler that no
    POST reaches (a GET-only view, ``list`` or ``update``, an ``@action``
    without "post").
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
                if _rolled_back_by_outage(store, exc):
                    return _refuse_outage(store, request, claim, exc)
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
    refuse_outage = sync_to_async(_refuse_outage, thread_sensitive=True)

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
                # A view that has started runs to its end when its client
                # leaves, as a sync view does, and its response is kept for
                # the retry to replay. Cancelled halfway, it would leave the
                # writes that a store cannot undo for the retry to make again;
                # rolled back, it would fail every attempt of a client whose
                # timeout is shorter than the view.
                response, cancelled = await _to_the_end(_run(view, args, kwargs))
            except BaseException as exc:
                if isinstance(exc, Exception) or store.rolls_back_view_writes:
                    await _to_the_end(release(store, claim, request, exc))
                    if _rolled_back_by_outage(store, exc):
                        return await refuse_outage(store, request, claim, exc)
                else:
                    # The view itself was stopped from outside: the loop is
                    # shutting down (asyncio.run cancels every task, this
                    # shielded one too). Its writes stand, so a retry must
                    # not run it again at once.
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
    """Whether the view failed on a database outage (its connection lost, the
    server restarting...) on a store that rolls the view's writes back with the
    claim: then nothing was done, and the answer is the store's retryable 503,
    not a 500. On other stores the view's own commits may stand: the error
    goes on (to DatabaseUnavailableMiddleware, if installed)."""
    return store.rolls_back_view_writes and errors.is_database_outage(exc)


def _refuse_outage(store: Store, request: Any, claim: Claim, exc: BaseException) -> Any:
    _notify(signals.store_unavailable, store, request, claim.record, exception=exc)
    return _refuse(request, errors.STORE_UNAVAILABLE)


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
    if isinstance(args[0], HttpRequest) or _is_drf_request(args[0]):
        return args[0], None
    if len(args) < 2 or not (isinstance(args[1], HttpRequest) or _is_drf_request(args[1])):
        got = f"a {type(args[1]).__name__}" if len(args) > 1 else "no request"
        what = f"a method of {type(args[0]).__name__} got {got}:"
        raise ImproperlyConfigured(_NOT_A_HANDLER.format(what=what))
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
        # DRF's perform_create(self, serializer) and kin: no request to read.
        raise ImproperlyConfigured(_NOT_A_HANDLER.format(what=f"{view.__name__}() gets"))
    view_class = getattr(view, "cls", None) or getattr(view, "view_class", None)
    if view_class is not None:
        # The result of @api_view or as_view(): we would run before DRF has
        # authenticated the caller, so every key would have the anonymous scope.
        # as_view() returns a function named "view"; @api_view names its class
        # after the decorated function.
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
    """Claim the request's key: the store and the claim if the view may run, the
    response to send instead if not, or None to run it unguarded (no key sent to
    a view where it is optional)."""
    ensure_checked()  # once per process: manage.py's checks do not run under gunicorn
    http_request: HttpRequest = getattr(request, "_request", request)
    raw_key = http_request.META.get(conf.header_meta_name)
    if raw_key is None:
        if required:
            return _refuse(request, errors.KEY_MISSING)
        return None
    try:
        key = parse_key(raw_key)
    except InvalidKey:
        return _refuse(request, errors.KEY_INVALID)
    if not _storable_path(http_request.path):
        return _refuse(request, errors.PATH_INVALID)
    scope = conf.scope_function(request)
    if scope is None:
        return _refuse(request, errors.SCOPE_UNAVAILABLE)
    method = http_request.method or "POST"
    try:
        request_fingerprint = fingerprint_content(
            method,
            http_request.path,
            http_request.META.get("QUERY_STRING", ""),
            _content(request, http_request),
        )
    except (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent):
        return _refuse(request, errors.REQUEST_TOO_LARGE)
    except (MultiPartParserError, BadRequest):
        return _refuse(request, errors.BODY_MALFORMED)
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
    try:
        store = get_store()
    except StoreError as exc:  # nothing to send signals for: no store
        logger.error("%s; answered %s.", exc, _answer_of(exc).status)
        return _refuse(request, _answer_of(exc))
    try:
        outcome = store.begin(record)
    except StoreError as exc:
        _notify(signals.store_unavailable, store, request, record, exception=exc)
        return _refuse(request, _answer_of(exc))
    if isinstance(outcome, Replay):
        _notify(signals.replayed, store, request, record, status=outcome.response.status)
        return _replay(request, outcome.response)
    if isinstance(outcome, Conflict):
        _notify(signals.conflict, store, request, record)
        return _refuse(request, errors.CONFLICT)
    if isinstance(outcome, InUse):
        _notify(signals.in_use, store, request, record)
        return _refuse(request, errors.IN_USE)
    request.idempotency_key = http_request.idempotency_key = record_key(  # type: ignore[attr-defined]
        record.scope, key, outcome.anchor
    )
    _notify(signals.claimed, store, request, record)
    return store, outcome


def _refuse(request: Any, error: errors.ErrorType) -> HttpResponseBase:
    """The answer to a request that the decorator refuses.

    In a DRF view, DRF's way: the error's exception goes through the view's
    ``handle_exception()`` and so the project's ``EXCEPTION_HANDLER`` (the
    package's envelope where that is DRF's default), as DRF's own
    ``Throttled`` does. The retry hints and the request id go on whatever that
    handler made of it. Elsewhere, the package's envelope.
    """
    drf_view = _drf_view(request)
    if drf_view is None:
        return errors.error_response(request, error)
    response = exceptions.handle(drf_view, exceptions.exception_for(error))
    return _with_hints(response, request, errors.retry_headers(error.retryable))


def _answer_of(exc: StoreError) -> errors.ErrorType:
    """A store's failure as the client sees it: an outage says "retry", a
    configuration error (StoreMisconfigured) "do not retry"."""
    return errors.STORE_UNAVAILABLE if exc.retryable else errors.MISCONFIGURED


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
        # A 4xx that is released asks the client to fix the request: the view
        # refused it, so nothing was done under request.idempotency_key.
        claim.may_have_acted = rendered.status_code >= 500
        _release(store, claim, request, status=rendered.status_code)
    else:
        try:
            store.finish(claim, stored)
        except StoreError as exc:
            # The outcome could not be kept. A store raises this only when the
            # view's effects were undone with it (the database store rolls the
            # whole transaction back), so "not processed" is the truth.
            _notify(signals.store_unavailable, store, request, claim.record, exception=exc)
            return _refuse(request, _answer_of(exc))
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


def _abandon(store: Store, claim: Claim, exc: BaseException) -> None:
    """Leave the claim of a view stopped halfway to lapse (Store.abandon).
    Called in the event loop as it shuts down, when the request's sync thread
    may be gone."""
    store.abandon(claim)
    logger.warning(
        "Idempotency-Key %r, scope %r: the view was stopped before its end (%r) and its "
        "writes may stand, so its claim is left to lapse: a retry gets 'in use' until then.",
        claim.record.key,
        claim.record.scope,
        exc,
    )


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
        exc = info["exception"]
        # A StoreError, or the database error of a view that failed on an
        # outage (refuse_outage), which is always worth a retry.
        retryable = getattr(exc, "retryable", True)
        answer = errors.STORE_UNAVAILABLE if retryable else errors.MISCONFIGURED
        logger.error(
            "The idempotency store %s %s (%s); answered %s to %s %s, key %r, scope %r.",
            type(store).__name__,
            "failed" if retryable else "is misconfigured, fix it",
            exc,
            answer.status,
            record.method,
            record.path,
            record.key,
            record.scope,
            exc_info=exc,
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


FORM_MEDIA_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _content(request: Any, http_request: HttpRequest) -> bytes:
    """The canonical form of the request's body, for its fingerprint.

    Forms are taken from Django's own parse (``request.POST`` and
    ``request.FILES``), which is also what the view gets, whether that parse
    happens here or already happened in an authentication class or a CSRF
    check: one path, so one fingerprint. Files are hashed in chunks from
    Django's upload handlers (large ones are on disk), never read whole.

    Raises what Django's parse raises: ``RequestDataTooBig``,
    ``TooManyFieldsSent``, ``TooManyFilesSent`` (too large: 413) and
    ``MultiPartParserError`` or ``BadRequest`` (malformed: 400).
    """
    _check_size(http_request)
    # As Django decides whether request.POST parses the body.
    media_type = http_request.content_type or ""
    if media_type in FORM_MEDIA_TYPES and _view_parses(request, http_request):
        return _form_content(http_request)
    try:
        return canonical_body(http_request.META.get("CONTENT_TYPE", ""), http_request.body)
    except RawPostDataException:
        pass
    # Something read the body from the stream before the decorator ran (DRF's
    # SessionAuthentication CSRF check parses it with the view's parsers), so
    # the bytes are gone: take the content from that parse.
    if media_type in FORM_MEDIA_TYPES:
        return _form_content(http_request)
    if not _is_drf_request(request):
        raise MultiPartParserError("the request body was read before @idempotent")
    if is_json(media_type_of(http_request.META.get("CONTENT_TYPE", ""))):
        return canonical_json(request.data)
    return _parsed_content(media_type, request.data, request.FILES)


def _check_size(http_request: HttpRequest) -> None:
    """Django's limit on bodies held in memory (``HttpRequest.body`` applies it),
    on every path: also when the body was already read from the stream, which
    does not apply it. Multipart bodies are streamed, files to disk when
    large, and Django limits their fields, not their files."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None or http_request.content_type == "multipart/form-data":
        return
    if int(http_request.META.get("CONTENT_LENGTH") or 0) > limit:
        raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")


def _view_parses(request: Any, http_request: HttpRequest) -> bool:
    """Whether the view reads this form, so parsing it here changes nothing for
    the view: a plain Django view (request.POST), or a DRF view with a parser
    for the media type. A DRF view without one answers 415 from its own
    parse, which must find the body unread."""
    if not _is_drf_request(request) or hasattr(http_request, "_post"):
        return True
    return request.negotiator.select_parser(request, request.parsers) is not None


def _form_content(http_request: HttpRequest) -> bytes:
    fields = [(name, http_request.POST.getlist(name)) for name in http_request.POST]
    files = []
    for field in http_request.FILES:
        for upload in http_request.FILES.getlist(field):
            files.append(_form_file(field, upload))
    return canonical_form(fields, files)


def _form_file(field: str, upload: Any) -> FormFile:
    digest = file_sha256(upload.chunks())
    upload.seek(0)  # for the view
    return FormFile(field, upload.name or "", upload.content_type or "", digest)


def _parsed_content(media_type: str, data: Any, files: Any) -> bytes:
    """Another media type that a DRF parser read from the stream (a file upload
    parser, say): its parsed fields and files."""
    if hasattr(data, "lists"):
        fields = [(str(name), [str(v) for v in values]) for name, values in data.lists()]
    elif isinstance(data, dict):
        fields = [
            (str(name), [json.dumps(value, sort_keys=True, default=str)])
            for name, value in data.items()
        ]
    else:
        fields = [("", [json.dumps(data, sort_keys=True, default=str)])]
    # A MultiValueDict, or a plain dict of one file per field (FileUploadParser's).
    uploads = [
        _form_file(field, upload)
        for field in files
        for upload in (files.getlist(field) if hasattr(files, "getlist") else [files[field]])
    ]
    return f"parsed {media_type}\n".encode("utf-8", "surrogateescape") + canonical_form(
        fields, uploads
    )


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
        try:
            content = b"".join(response.streaming_content)
        finally:
            _close(response)
        return _buffered(response, content)
    assert isinstance(response, HttpResponseBase), (
        f"An @idempotent view must return an HttpResponse, not {type(response).__name__}"
    )
    return response


async def _drained(response: Any) -> Any:
    """Read an async streaming response here, in the event loop, so that the
    store's sync code can keep its bytes."""
    if getattr(response, "streaming", False) and getattr(response, "is_async", False):
        try:
            content = b"".join([chunk async for chunk in response.streaming_content])
        finally:
            _close(response)
        return _buffered(response, content)
    return response


def _buffered(response: HttpResponseBase, content: bytes) -> HttpResponse:
    """A streaming response, read: the same status, headers and cookies."""
    buffered = HttpResponse(content, status=response.status_code)
    for name, value in response.items():
        buffered[name] = value
    buffered.cookies = response.cookies
    return buffered


def _close(response: HttpResponseBase) -> None:
    """Run a read streaming response's closers (a FileResponse's file, the
    iterator's close()): the server would have, but it gets the buffered copy.
    Not response.close(): that also sends request_finished, which closes the
    database connection that holds the database store's open claim."""
    closers = list(response._resource_closers)  # type: ignore[attr-defined]
    response._resource_closers.clear()  # type: ignore[attr-defined]
    for closer in closers:
        try:
            closer()
        except Exception:  # as HttpResponseBase.close(): a closer's failure is not the client's
            logger.warning("Closing a streaming response failed", exc_info=True)


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
