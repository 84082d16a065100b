"""``@idempotent``: the only part of the app that knows about views and DRF."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, RawPostDataException
from django.utils import timezone
from rest_framework.response import Response

from . import errors
from .conf import conf
from .keys import InvalidBody, InvalidKey, fingerprint, header_meta_name, parse_key, scoped_key
from .stores import Claim, Conflict, InUse, Replay, RequestRecord, StoredResponse, StoreError, get_store

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., Any])

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
    function view::

        class JobViewSet(viewsets.ModelViewSet):
            @idempotent
            def create(self, request, *args, **kwargs): ...

    ``required=False`` lets requests without the header through unguarded;
    ``ttl`` overrides ``IDEMPOTENCY_TTL`` for this view. Methods other than POST
    pass through untouched.
    """
    if view is None:
        return functools.partial(idempotent, required=required, ttl=ttl)  # type: ignore[return-value]
    _check_decorated(view)

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if isinstance(args[0], HttpRequest) or _is_drf_request(args[0]):
            request, view_self = args[0], None
        else:
            request, view_self = args[1], args[0]
        if request.method not in GUARDED_METHODS:
            return view(*args, **kwargs)
        return _guarded(view, args, kwargs, request, view_self, required, ttl)

    wrapper._idempotent = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


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


def _guarded(
    view: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    request: Any,
    view_self: Any,
    required: bool,
    ttl: timedelta | None,
) -> HttpResponseBase:
    http_request: HttpRequest = getattr(request, "_request", request)
    raw_key = http_request.META.get(header_meta_name(conf.IDEMPOTENCY_HEADER))
    if raw_key is None:
        if required:
            return errors.error_response(request, errors.KEY_MISSING)
        return view(*args, **kwargs)  # type: ignore[no-any-return]
    try:
        key = parse_key(raw_key)
    except InvalidKey:
        return errors.error_response(request, errors.KEY_INVALID)
    scope = conf.scope_function(request)
    if scope is None:
        return errors.error_response(request, errors.SCOPE_UNAVAILABLE)
    try:
        body = _body(request, http_request)
    except RequestDataTooBig:
        return errors.error_response(request, errors.REQUEST_TOO_LARGE)

    try:
        request_fingerprint = fingerprint(
            http_request.method or "POST",
            http_request.path,
            http_request.META.get("QUERY_STRING", ""),
            http_request.META.get("CONTENT_TYPE", ""),
            body,
        )
    except InvalidBody:
        return errors.error_response(request, errors.BODY_INVALID)

    now = timezone.now()
    record = RequestRecord(
        scope=str(scope),
        key=key,
        fingerprint=request_fingerprint,
        method=http_request.method or "POST",
        path=http_request.path,
        created_at=now,
        expires_at=now + (ttl if ttl is not None else conf.IDEMPOTENCY_TTL),
    )
    request.idempotency_key = http_request.idempotency_key = scoped_key(record.scope, key)  # type: ignore[attr-defined]

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
    return _run_claimed(store, outcome, view, args, kwargs, request, view_self)


def _run_claimed(
    store: Any,
    claim: Claim,
    view: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    request: Any,
    view_self: Any,
) -> HttpResponseBase:
    try:
        response = _materialised(view(*args, **kwargs), request, view_self, args, kwargs)
        kept = _keeps(response.status_code)
        stored = _to_stored(response) if kept else None
    except BaseException as exc:
        store.release(claim, exc)
        raise
    if stored is None:
        store.release(claim)
    else:
        store.finish(claim, stored)
    if errors.REQUEST_ID_HEADER not in response:
        response[errors.REQUEST_ID_HEADER] = errors.get_request_id(request)
    return response


def _body(request: Any, http_request: HttpRequest) -> bytes:
    try:
        return http_request.body
    except RawPostDataException:
        # Something (an authentication or permission class) already parsed the
        # body from the stream, so the bytes are gone: use what it parsed.
        import json

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
            drf_view = view_self or getattr(request, "parser_context", {}).get("view")
            view_args = args[2:] if view_self is not None else args[1:]
            drf_view.finalize_response(request, response, *view_args, **kwargs)
        response.render()
    if getattr(response, "streaming", False):
        streamed = HttpResponse(b"".join(response.streaming_content), status=response.status_code)
        for name, value in response.items():
            streamed[name] = value
        return streamed
    assert isinstance(response, HttpResponseBase), (
        f"An @idempotent view must return an HttpResponse, not {type(response).__name__}"
    )
    return response


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
