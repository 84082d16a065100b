"""System checks for the IDEMPOTENCY_* settings (see docs/reference.rst, "System checks").

Each check reads the setting as configured (``conf.raw``), so that a bad value
is reported at start-up with a hint instead of failing in the first request.
Ids are stable. E010, E012, E013, E020 and E041 to E045 are the Redis store's
(``RedisStore.check``, ``RedisStore.check_deployment``); E011, E021, E033,
E034, E050 and W030 to W032 are the database store's: a store brings its own
checks (``Store.check``).

Django runs system checks only from ``manage.py`` (``runserver``, ``migrate``,
``check``). Under gunicorn or uvicorn nothing runs them, so the app's
``ready()`` calls :func:`ensure_checked`: a bad setting stops the process at
start-up with a clear ``ImproperlyConfigured`` naming each problem, not a 500
deep inside a request or, worse, a silent change of guarantee. The decorator
calls it again on the first request after a setting changed (tests).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Collection, Sequence
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .conf import conf, ttl_problem

Messages = list[checks.CheckMessage]

logger = logging.getLogger(__name__)

# RFC 9110 section 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@checks.register
def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> Messages:
    """Every check of this app; Django runs it with ``manage.py check`` and at start-up."""
    return [
        *_check_store(),
        *_check_ttl(),
        *_check_scope(),
        *_check_released_statuses(),
        *_check_header(),
        *_check_should_retry_headers(),
        *_check_retry_after(),
        *_check_admin_masked_fields(),
    ]


def ensure_checked() -> None:
    """Run this app's checks once per process (again after a setting changes).

    Raises ImproperlyConfigured listing every error that is not silenced by
    ``SILENCED_SYSTEM_CHECKS`` (logged once, at ERROR, since under gunicorn
    with ``DEBUG = False`` Django's own logging shows nothing); warnings do not
    stop requests.
    """
    if conf.checked is True:
        return
    if conf.checked is False:
        errors = [
            message
            for message in check_settings()
            if message.is_serious() and not message.is_silenced()
        ]
        if not errors:
            conf.checked = True
            return
        conf.checked = (
            "django-idempotency's settings are invalid (its system checks found these "
            "errors when Django started):\n" + "\n".join(str(message) for message in errors)
        )
        logger.error("%s", conf.checked)
    raise ImproperlyConfigured(conf.checked)


def _error(id_: int, msg: str, hint: str) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"django_idempotency.E{id_:03d}")


def _warning(id_: int, msg: str, hint: str) -> checks.Warning:
    return checks.Warning(msg, hint=hint, id=f"django_idempotency.W{id_:03d}")


def _import_store() -> tuple[Any, Exception | None]:
    """The class that IDEMPOTENCY_STORE names, or why it cannot be imported."""
    try:
        return import_string(conf.raw("IDEMPOTENCY_STORE")), None
    except (ImportError, TypeError, ValueError) as exc:
        return None, exc


def _check_store() -> Messages:
    from .stores.base import Store

    path = conf.raw("IDEMPOTENCY_STORE")
    store_class, exc = _import_store()
    if exc is not None:
        return [
            _error(
                1,
                f"IDEMPOTENCY_STORE {path!r} cannot be imported: {exc}",
                "Use 'django_idempotency.stores.database.DatabaseStore' or the dotted path "
                "of a Store subclass.",
            )
        ]
    if not (isinstance(store_class, type) and issubclass(store_class, Store)):
        return [
            _error(
                2,
                f"IDEMPOTENCY_STORE {path!r} is not a Store subclass.",
                "Subclass django_idempotency.stores.base.Store.",
            )
        ]
    if inspect.isabstract(store_class):
        missing = ", ".join(sorted(getattr(store_class, "__abstractmethods__", ())))
        return [
            _error(
                2,
                f"IDEMPOTENCY_STORE {path!r} is abstract: it does not implement {missing}.",
                "Name a concrete Store subclass, one that implements begin, finish and release.",
            )
        ]
    # The store's own checks: its settings, its backend.
    return list(store_class.check())


def _check_ttl() -> Messages:
    ttl = conf.raw("IDEMPOTENCY_TTL")
    problem = ttl_problem(ttl)
    if problem is None:
        return []
    kind, text = problem
    if kind == "type":
        return [_error(3, f"IDEMPOTENCY_TTL {text}.", "For example: timedelta(hours=24).")]
    return [
        _error(
            4,
            f"IDEMPOTENCY_TTL {text}.",
            "A key is remembered for this long; 24 hours is the usual choice.",
        )
    ]


def _check_scope() -> Messages:
    scope = conf.raw("IDEMPOTENCY_SCOPE")
    if isinstance(scope, str):
        try:
            scope = import_string(scope)
        except ImportError as exc:
            return [
                _error(
                    5,
                    f"IDEMPOTENCY_SCOPE {conf.raw('IDEMPOTENCY_SCOPE')!r} cannot be imported: "
                    f"{exc}",
                    "Give the dotted path of a function that takes the request and returns "
                    "a string, or None to refuse the request.",
                )
            ]
    hint = (
        "Give a function that takes the request and returns a string, or None to refuse "
        "the request."
    )
    if not callable(scope):
        return [
            _error(
                6,
                f"IDEMPOTENCY_SCOPE must be a callable or the dotted path of one, not {scope!r}.",
                hint,
            )
        ]
    try:
        inspect.signature(scope).bind(None)
    except TypeError:
        return [
            _error(
                6,
                f"IDEMPOTENCY_SCOPE {scope!r} cannot be called with the request as its one "
                "argument.",
                hint,
            )
        ]
    except ValueError:  # no signature to inspect (some built-ins): trust it
        pass
    return []


def _check_released_statuses() -> Messages:
    statuses = conf.raw("IDEMPOTENCY_RELEASED_STATUSES")
    hint = "For example: IDEMPOTENCY_RELEASED_STATUSES = {400, 401, 403, 422, 429}."
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Collection):
        return [
            _error(
                7,
                f"IDEMPOTENCY_RELEASED_STATUSES must be a collection of HTTP status codes, "
                f"not {statuses!r}.",
                hint,
            )
        ]
    bad = [
        status
        for status in statuses
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ]
    if bad:
        return [
            _error(
                7,
                f"IDEMPOTENCY_RELEASED_STATUSES has values that are not HTTP status codes "
                f"(integers from 100 to 599): {bad!r}.",
                hint,
            )
        ]
    successes = sorted(status for status in statuses if 200 <= status <= 299)
    if successes:
        return [
            _warning(
                1,
                f"IDEMPOTENCY_RELEASED_STATUSES includes successful statuses {successes}: "
                "a retry of a request that succeeded runs the operation again.",
                "Release only statuses that the client is expected to fix and retry, "
                "such as 400, 401, 403, 422 and 429.",
            )
        ]
    return []


def _check_header() -> Messages:
    header = conf.raw("IDEMPOTENCY_HEADER")
    if not isinstance(header, str) or not _TOKEN.fullmatch(header):
        return [
            _error(
                8,
                f"IDEMPOTENCY_HEADER must be an HTTP header name (a token of letters, digits "
                f"and !#$%&'*+-.^_`|~), not {header!r}.",
                "Leave it unset for 'Idempotency-Key', the name the IETF draft specifies.",
            )
        ]
    if "_" in header:
        return [
            _warning(
                2,
                f"IDEMPOTENCY_HEADER {header!r} has an underscore: Django's runserver, nginx "
                "and other servers drop such headers, and WSGI cannot tell '_' from '-'.",
                "Use '-' instead of '_'.",
            )
        ]
    return []


def _check_should_retry_headers() -> Messages:
    names = conf.raw("IDEMPOTENCY_SHOULD_RETRY_HEADERS")
    if not isinstance(names, list | tuple) or not all(
        isinstance(name, str) and _TOKEN.fullmatch(name) for name in names
    ):
        return [
            _error(
                15,
                "IDEMPOTENCY_SHOULD_RETRY_HEADERS must be a list or tuple of HTTP header "
                f"names (tokens of letters, digits and !#$%&'*+-.^_`|~), not {names!r}.",
                'For example ("X-Should-Retry", "Stripe-Should-Retry"); a single string '
                "would be read as its letters. Use () to send no retry hint.",
            )
        ]
    return []


def _check_retry_after() -> Messages:
    retry_after = conf.raw("IDEMPOTENCY_RETRY_AFTER")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        return [
            _error(
                9,
                f"IDEMPOTENCY_RETRY_AFTER must be a whole number of seconds, 0 or more, "
                f"not {retry_after!r}.",
                "It is sent as the Retry-After header of 409 idempotency_key_in_use; "
                "the default is 1.",
            )
        ]
    return []


def _check_admin_masked_fields() -> Messages:
    fields = conf.raw("IDEMPOTENCY_ADMIN_MASKED_FIELDS")
    if (
        isinstance(fields, str | bytes)
        or not isinstance(fields, Collection)
        or not all(isinstance(field, str) and field for field in fields)
    ):
        return [
            _error(
                14,
                "IDEMPOTENCY_ADMIN_MASKED_FIELDS must be a collection of field names, "
                f"not {fields!r}.",
                'For example ("secret", "token", "password", "key"); a single string '
                "would be read as its letters. Extend "
                "django_idempotency.conf.DEFAULT_ADMIN_MASKED_FIELDS to keep the defaults.",
            )
        ]
    return []


@checks.register(checks.Tags.caches, deploy=True)
def check_redis_server(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> Messages:
    """``check --deploy``: the Redis store's checks that ask the server."""
    from .stores.base import Store

    store_class, _ = _import_store()
    if not (isinstance(store_class, type) and issubclass(store_class, Store)):
        return []
    return list(store_class.check_deployment())


# @idempotent where no POST can reach it (W050). The URLconf says which view
# classes are served and, for viewsets, which HTTP method each route maps to
# which method, as Django's own URL checks read it.

# Handlers that DRF's views, generic views and viewsets call for methods
# other than POST; a decorated method of another name may be a helper that a
# POST handler calls, so it is left alone unless a route names it.
_OTHER_METHODS = frozenset({"get", "put", "patch", "delete", "head", "options", "trace"})
_NOT_POST_HANDLERS = _OTHER_METHODS | {"list", "retrieve", "update", "partial_update", "destroy"}


@checks.register(checks.Tags.urls)
def check_guarded_views(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> Messages:
    """W050: ``@idempotent`` on a handler that never receives a POST, so it
    guards nothing (a GET-only view, ``list`` or ``update`` of a viewset, an
    ``@action`` without "post" in its methods)."""
    from django.urls import get_resolver

    if not getattr(settings, "ROOT_URLCONF", None):
        return []
    routed: dict[type, dict[str, set[str]]] = {}  # viewset -> method name -> HTTP methods
    classes: set[type] = set()  # APIView and View classes (as_view())
    for callback in _callbacks(get_resolver().url_patterns):
        view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
        if not isinstance(view_class, type):
            continue
        actions = getattr(callback, "actions", None)
        if isinstance(actions, dict):
            names = routed.setdefault(view_class, {})
            for http_method, name in actions.items():
                names.setdefault(name, set()).add(http_method.upper())
        else:
            classes.add(view_class)
    messages: Messages = []
    for view_class, names in routed.items():
        for name, handler in _guarded_handlers(view_class):
            methods = names.get(name, set())
            if "POST" in methods:
                continue
            if methods or name in _NOT_POST_HANDLERS or hasattr(handler, "mapping"):
                messages.append(_never_post(view_class, name, handler, methods))
    for view_class in classes:
        post = inspect.getattr_static(view_class, "post", None)
        for name, handler in _guarded_handlers(view_class):
            # @api_view(["GET", "POST"]) serves one function as get() and post().
            if name in _NOT_POST_HANDLERS and handler is not post:
                messages.append(_never_post(view_class, name, handler, set()))
    return messages


def _callbacks(patterns: Sequence[Any]) -> Any:
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):  # an include()
            yield from _callbacks(pattern.url_patterns)
        else:
            yield pattern.callback


def _guarded_handlers(view_class: type) -> list[tuple[str, Any]]:
    found = []
    for name in dir(view_class):
        handler = inspect.getattr_static(view_class, name, None)
        if callable(handler) and getattr(_decorated(handler), "_idempotent", False):
            found.append((name, handler))
    return found


def _decorated(handler: Any) -> Any:
    """The function that ``handler`` serves: itself, or for ``@api_view``,
    the decorated function that its ``handler(self, ...)`` closes over."""
    if getattr(handler, "__qualname__", "").startswith("api_view."):
        try:
            return inspect.getclosurevars(handler).nonlocals.get("func", handler)
        except (TypeError, ValueError):
            return handler
    return handler


def _never_post(view_class: type, name: str, handler: Any, methods: set[str]) -> checks.Warning:
    where = f"{view_class.__module__}.{view_class.__name__}"
    # @api_view names its class after the function, which serves as get() etc.
    function_name = getattr(_decorated(handler), "__name__", "")
    where += "()" if function_name == view_class.__name__ else f".{name}()"
    if methods:
        served = f"its routes send it {', '.join(sorted(methods))} only"
    elif name in _OTHER_METHODS:
        served = f"it handles {name.upper()} only"
    else:
        served = "no route sends it a POST"
    return _warning(
        50,
        f"@idempotent on {where} guards nothing: {served}.",
        "@idempotent guards POST requests only (PUT, PATCH and DELETE are idempotent by "
        "definition). Decorate a viewset's create(), an APIView's post(), an @api_view "
        "function that accepts POST, or an @action with methods=['post'].",
    )
