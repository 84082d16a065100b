"""System checks for the ``IDEMPOTENCY_*`` settings (docs/settings.rst, "System checks").

Each reads the setting as configured (``conf.raw``), so that a bad value is
reported at start-up with a hint, not in the first request; the configured
store adds its own (``Store.check``). Nothing runs system checks under gunicorn
or uvicorn, so ``AppConfig.ready()`` calls :func:`ensure_checked`.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from . import encryption
from .conf import conf, ttl_problem

Messages = list[checks.CheckMessage]
Found = Iterator[checks.CheckMessage]

logger = logging.getLogger(__name__)

# RFC 9110 section 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_TEXT = "letters, digits and !#$%&'*+-.^_`|~"


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
        *encryption.check(),
    ]


def ensure_checked() -> None:
    """Run this app's checks once per process (again after a setting changes).

    Raises ImproperlyConfigured listing every error not silenced by
    ``SILENCED_SYSTEM_CHECKS``, and logs it once at ERROR (gunicorn with
    ``DEBUG = False`` shows nothing else). Warnings do not stop requests.
    """
    if conf.checked is True:
        return
    if conf.checked is False:
        errors = [m for m in check_settings() if m.is_serious() and not m.is_silenced()]
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


def _check_store() -> Found:
    from .stores.base import Store

    path = conf.raw("IDEMPOTENCY_STORE")
    store_class, exc = _import_store()
    if exc is not None:
        yield _error(
            1,
            f"IDEMPOTENCY_STORE {path!r} cannot be imported: {exc}",
            "Use 'django_idempotency.stores.database.DatabaseStore' or the dotted path "
            "of a Store subclass.",
        )
    elif not (isinstance(store_class, type) and issubclass(store_class, Store)):
        yield _error(
            2,
            f"IDEMPOTENCY_STORE {path!r} is not a Store subclass.",
            "Subclass django_idempotency.stores.base.Store.",
        )
    elif inspect.isabstract(store_class):
        missing = ", ".join(sorted(getattr(store_class, "__abstractmethods__", ())))
        yield _error(
            2,
            f"IDEMPOTENCY_STORE {path!r} is abstract: it does not implement {missing}.",
            "Name a concrete Store subclass, one that implements begin, finish and release.",
        )
    else:
        yield from store_class.check()


def _check_ttl() -> Found:
    if problem := ttl_problem(conf.raw("IDEMPOTENCY_TTL")):
        kind, text = problem
        hint = "A key is remembered for this long; 24 hours is the usual choice."
        if kind == "type":
            hint = "For example: timedelta(hours=24)."
        yield _error(3 if kind == "type" else 4, f"IDEMPOTENCY_TTL {text}.", hint)


def _check_scope() -> Found:
    scope = conf.raw("IDEMPOTENCY_SCOPE")
    hint = (
        "Give a function that takes the request and returns a string, or None to refuse "
        "the request."
    )
    if isinstance(scope, str):
        try:
            scope = import_string(scope)
        except ImportError as exc:
            yield _error(5, f"IDEMPOTENCY_SCOPE {scope!r} cannot be imported: {exc}", hint)
            return
    if not callable(scope):
        yield _error(
            6,
            f"IDEMPOTENCY_SCOPE must be a callable or the dotted path of one, not {scope!r}.",
            hint,
        )
        return
    try:
        inspect.signature(scope).bind(None)
    except TypeError:
        msg = f"IDEMPOTENCY_SCOPE {scope!r} cannot be called with the request as its one argument."
        yield _error(6, msg, hint)
    except ValueError:  # no signature to inspect (some built-ins): trust it
        pass


def _check_released_statuses() -> Found:
    statuses = conf.raw("IDEMPOTENCY_RELEASED_STATUSES")
    hint = "For example: IDEMPOTENCY_RELEASED_STATUSES = {400, 401, 403, 422, 429}."
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Collection):
        what = f"a collection of HTTP status codes, not {statuses!r}"
        yield _error(7, f"IDEMPOTENCY_RELEASED_STATUSES must be {what}.", hint)
        return
    bad = [
        s for s in statuses if isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599
    ]
    if bad:
        yield _error(
            7,
            "IDEMPOTENCY_RELEASED_STATUSES has values that are not HTTP status codes "
            f"(integers from 100 to 599): {bad!r}.",
            hint,
        )
    elif successes := sorted(status for status in statuses if 200 <= status <= 299):
        yield _warning(
            1,
            f"IDEMPOTENCY_RELEASED_STATUSES includes successful statuses {successes}: "
            "a retry of a request that succeeded runs the operation again.",
            "Release only statuses that the client is expected to fix and retry, "
            "such as 400, 401, 403, 422 and 429.",
        )


def _check_header() -> Found:
    header = conf.raw("IDEMPOTENCY_HEADER")
    if not isinstance(header, str) or not _TOKEN.fullmatch(header):
        yield _error(
            8,
            f"IDEMPOTENCY_HEADER must be an HTTP header name (a token of {_TOKEN_TEXT}), "
            f"not {header!r}.",
            "Leave it unset for 'Idempotency-Key', the name the IETF draft specifies.",
        )
    elif "_" in header:
        yield _warning(
            2,
            f"IDEMPOTENCY_HEADER {header!r} has an underscore: Django's runserver, nginx "
            "and other servers drop such headers, and WSGI cannot tell '_' from '-'.",
            "Use '-' instead of '_'.",
        )


def _check_should_retry_headers() -> Found:
    names = conf.raw("IDEMPOTENCY_SHOULD_RETRY_HEADERS")
    if not isinstance(names, list | tuple) or not all(
        isinstance(name, str) and _TOKEN.fullmatch(name) for name in names
    ):
        yield _error(
            15,
            "IDEMPOTENCY_SHOULD_RETRY_HEADERS must be a list or tuple of HTTP header "
            f"names (tokens of {_TOKEN_TEXT}), not {names!r}.",
            'For example ("X-Should-Retry", "Stripe-Should-Retry"); a single string '
            "would be read as its letters. Use () to send no retry hint.",
        )


def _check_retry_after() -> Found:
    value = conf.raw("IDEMPOTENCY_RETRY_AFTER")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        yield _error(
            9,
            f"IDEMPOTENCY_RETRY_AFTER must be a whole number of seconds, 0 or more, not {value!r}.",
            "It is sent as the Retry-After header of 409 idempotency_key_in_use; the default is 1.",
        )


def _check_admin_masked_fields() -> Found:
    fields = conf.raw("IDEMPOTENCY_ADMIN_MASKED_FIELDS")
    if (
        isinstance(fields, str | bytes)
        or not isinstance(fields, Collection)
        or not all(isinstance(field, str) and field for field in fields)
    ):
        yield _error(
            14,
            f"IDEMPOTENCY_ADMIN_MASKED_FIELDS must be a collection of field names, not {fields!r}.",
            'For example ("secret", "token", "password", "key"); a single string would be '
            "read as its letters. Extend django_idempotency.conf.DEFAULT_ADMIN_MASKED_FIELDS "
            "to keep the defaults.",
        )


@checks.register(checks.Tags.caches, deploy=True)
def check_store_deployment(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> Messages:
    """``check --deploy``: the configured store's checks that ask its server
    (``Store.check_deployment()``; the Redis store's asks whether it is a
    cluster node behind a plain client)."""
    from .stores.base import Store

    store_class, _ = _import_store()
    if not (isinstance(store_class, type) and issubclass(store_class, Store)):
        return []
    return list(store_class.check_deployment())


# Handlers that DRF's views and viewsets call for methods other than POST. A
# decorated method of another name may be a helper that a POST handler calls,
# so it is left alone unless a route names it.
_OTHER_METHODS = frozenset({"get", "put", "patch", "delete", "head", "options", "trace"})
_NOT_POST_HANDLERS = _OTHER_METHODS | {"list", "retrieve", "update", "partial_update", "destroy"}


@checks.register(checks.Tags.urls)
def check_guarded_views(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> Messages:
    """W050: ``@idempotent`` on a handler that no POST reaches, read from the
    URLconf as Django's own URL checks read it."""
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
            if "POST" not in methods and (
                methods or name in _NOT_POST_HANDLERS or hasattr(handler, "mapping")
            ):
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


def _guarded_handlers(view_class: type) -> Iterator[tuple[str, Any]]:
    for name in dir(view_class):
        handler = inspect.getattr_static(view_class, name, None)
        if callable(handler) and getattr(_decorated(handler), "_idempotent", False):
            yield name, handler


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
