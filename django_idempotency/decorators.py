"""``@idempotent``: the only part of the app that knows about views and DRF."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction, sync_to_async
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

from . import errors
from .conf import conf
from .keys import (
    FormFile,
    InvalidBody,
    InvalidKey,
    canonical_body,
    canonical_form,
    canonical_json,
    file_sha256,
    fingerprint_content,
    header_meta_name,
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

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., Any])
logger = logging.getLogger("django_idempotency")

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
    scope = conf.scope_function(request)
    if scope is None:
        return errors.error_response(request, errors.SCOPE_UNAVAILABLE)
    method = http_request.method or "POST"
    try:
        request_fingerprint = fingerprint_content(
            method,
            http_request.path,
            http_request.META.get("QUERY_STRING", ""),
            _content(request, http_request),
        )
    except (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent):
        return errors.error_response(request, errors.REQUEST_TOO_LARGE)
    except (MultiPartParserError, BadRequest):
        return errors.error_response(request, errors.BODY_MALFORMED)
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
    store = get_store()
    try:
        outcome = store.begin(record)
    except StoreError:
        return errors.error_response(request, errors.STORE_UNAVAILABLE)
    if isinstance(outcome, Replay):
        return _replay(request, outcome.response)
    if isinstance(outcome, Conflict):
        return errors.error_response(request, errors.CONFLICT)
    if isinstance(outcome, InUse):
        return errors.error_response(
            request, errors.IN_USE, headers={"Retry-After": str(conf.IDEMPOTENCY_RETRY_AFTER)}
        )
    request.idempotency_key = http_request.idempotency_key = record_key(  # type: ignore[attr-defined]
        record.scope, key, outcome.anchor
    )
    return store, outcome


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
        # A 4xx that is released asks the client to fix the request: the view
        # refused it, so nothing was done under request.idempotency_key.
        claim.may_have_acted = rendered.status_code >= 500
        store.release(claim)
    else:
        try:
            store.finish(claim, stored)
        except StoreError:
            # The outcome could not be kept. A store raises this only when the
            # view's effects were undone with it (the database store rolls the
            # whole transaction back), so "not processed" is the truth.
            return errors.error_response(request, errors.STORE_UNAVAILABLE)
    if errors.REQUEST_ID_HEADER not in rendered:
        rendered[errors.REQUEST_ID_HEADER] = errors.get_request_id(request)
    return rendered


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
        fields = [(str(name), [json.dumps(value, sort_keys=True, default=str)])
                  for name, value in data.items()]
    else:
        fields = [("", [json.dumps(data, sort_keys=True, default=str)])]
    uploads = [
        _form_file(field, upload) for field in files for upload in files.getlist(field)
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
