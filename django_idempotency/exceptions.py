"""The package's errors as DRF exceptions, and an ``EXCEPTION_HANDLER`` for the envelope.

In a DRF view, ``@idempotent`` refuses a request by handing one of these
exceptions to the view's ``handle_exception()`` (:func:`handle`), as DRF's
throttling does with ``Throttled``: a project that chose its own
``EXCEPTION_HANDLER`` gets them in its own error format. A project that kept
DRF's default handler gets them in the package's envelope, since
``{"detail": ...}`` cannot tell a conflict from a key in use. The retry hints
and the ``Request-Id`` header are added to whatever the handler made of it.

:func:`exception_handler` renders every DRF error (``ValidationError``,
``NotFound``, authentication errors, ours) in the package's envelope::

    REST_FRAMEWORK = {"EXCEPTION_HANDLER": "django_idempotency.exception_handler"}
"""

from __future__ import annotations

from typing import Any, ClassVar

from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response

from . import errors
from .conf import conf


class IdempotencyError(APIException):
    """One of the package's errors (an :class:`~django_idempotency.errors.ErrorType`)."""

    error: ClassVar[errors.ErrorType]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status_code = cls.error.status
        cls.default_detail = cls.error.message
        cls.default_code = cls.error.type

    def __init__(self, detail: Any = None, code: Any = None) -> None:
        super().__init__(detail, code)
        # As DRF's Throttled: its exception handler sends ``wait`` as Retry-After.
        self.wait: int | None = conf.IDEMPOTENCY_RETRY_AFTER if self.retryable else None

    @property
    def retryable(self) -> bool:
        return self.error.retryable


class IdempotencyKeyMissing(IdempotencyError):
    error = errors.KEY_MISSING


class IdempotencyKeyInvalid(IdempotencyError):
    error = errors.KEY_INVALID


class IdempotencyScopeUnavailable(IdempotencyError):
    error = errors.SCOPE_UNAVAILABLE


class RequestBodyInvalid(IdempotencyError):
    error = errors.BODY_INVALID


class RequestBodyMalformed(IdempotencyError):
    error = errors.BODY_MALFORMED


class RequestPathInvalid(IdempotencyError):
    error = errors.PATH_INVALID


class RequestTooLarge(IdempotencyError):
    error = errors.REQUEST_TOO_LARGE


class IdempotencyConflict(IdempotencyError):
    error = errors.CONFLICT


class IdempotencyKeyInUse(IdempotencyError):
    error = errors.IN_USE


class IdempotencyStoreUnavailable(IdempotencyError):
    error = errors.STORE_UNAVAILABLE


class IdempotencyMisconfigured(IdempotencyError):
    error = errors.MISCONFIGURED


class IdempotencyRecordUnreadable(IdempotencyError):
    error = errors.RECORD_UNREADABLE


_BY_ERROR: dict[errors.ErrorType, type[IdempotencyError]] = {
    cls.error: cls for cls in IdempotencyError.__subclasses__()
}


def exception_for(error: errors.ErrorType) -> IdempotencyError:
    """The exception that stands for ``error`` in a DRF view."""
    return _BY_ERROR[error]()


def handle(view: Any, exc: IdempotencyError) -> Response:
    """The DRF view ``view``'s answer to ``exc``: its ``handle_exception()``,
    so through the project's ``EXCEPTION_HANDLER``; where that is DRF's
    default, with :func:`exception_handler` in its place, for the envelope."""
    from rest_framework.views import exception_handler as drf_exception_handler

    if view.get_exception_handler() is not drf_exception_handler:
        response: Response = view.handle_exception(exc)
        return response
    # Shadowed on this instance, for this one call: the view's own
    # handle_exception() (an override that logs, say) still runs.
    view.get_exception_handler = lambda: exception_handler
    try:
        response = view.handle_exception(exc)
    finally:
        del view.get_exception_handler
    return response


# The envelope's "type" for DRF's own exceptions, whose codes are DRF's words
# ("invalid", "not_authenticated", "throttled") rather than an API's.
_DRF_CODES = frozenset(
    {
        "error",
        "invalid",
        "parse_error",
        "authentication_failed",
        "not_authenticated",
        "permission_denied",
        "not_found",
        "method_not_allowed",
        "not_acceptable",
        "unsupported_media_type",
        "throttled",
    }
)
_TYPES_BY_STATUS = {
    400: "invalid_request",
    401: "authentication_required",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's ``EXCEPTION_HANDLER`` in the package's envelope.

    DRF's own handling first (status, ``WWW-Authenticate``, ``Retry-After``,
    rollback of ``ATOMIC_REQUESTS``), then the body becomes
    ``{"error": {"type", "message", "request_id"}}``. The ``type`` is the
    exception's ``default_code`` when it has one of its own (so
    ``class InsufficientCredits(APIException): default_code =
    "insufficient_credits"`` is typed so), else a word for the status
    (``invalid_request``, ``not_found``, ...). A ``ValidationError`` also
    carries DRF's messages by field in ``"fields"``. Every answer has the
    ``Request-Id`` header and the retry hints. Anything that is not an API
    error is left to Django (a 500), as DRF does.
    """
    # Imported here: rest_framework.views reads DRF's settings on import, which
    # import the project's authentication classes, and so its models, and this
    # module is imported while Django loads the apps.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    request = context["request"]
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationError):
        message, fields = _validation_summary(response.data)
        if fields:
            extra["fields"] = fields
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else None
        message = str(detail or exc)
    type_ = error_type(exc, response.status_code)
    response.data = errors.envelope(request, type_, message, **extra)
    response[errors.REQUEST_ID_HEADER] = errors.get_request_id(request)
    retryable = getattr(exc, "retryable", None)
    if retryable is None:
        retryable = errors.should_retry(response.status_code)
    for name, value in errors.retry_headers(retryable).items():
        if name != "Retry-After" or name not in response:  # DRF's own ``wait`` wins
            response[name] = value
    return response


def error_type(exc: Exception, status: int) -> str:
    """The envelope's ``type`` for an API exception answered with ``status``."""
    code = getattr(exc, "default_code", None)
    if isinstance(code, str) and code not in _DRF_CODES:
        return code
    return _TYPES_BY_STATUS.get(status, "api_error")


def _validation_summary(data: Any) -> tuple[str, dict[str, Any] | None]:
    """A one-line message naming the first problem, and DRF's per-field messages."""
    if isinstance(data, dict) and data:
        name, messages = next(iter(data.items()))
        first = _first_message(messages)
        return (first if name == "non_field_errors" else f"{name}: {first}"), data
    return _first_message(data) or "The request is invalid", None


def _first_message(messages: Any) -> str:
    while isinstance(messages, (list, dict)) and messages:
        messages = next(iter(messages.values())) if isinstance(messages, dict) else messages[0]
    return str(messages) if messages else ""


__all__ = [
    "IdempotencyConflict",
    "IdempotencyError",
    "IdempotencyKeyInUse",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMissing",
    "IdempotencyMisconfigured",
    "IdempotencyRecordUnreadable",
    "IdempotencyScopeUnavailable",
    "IdempotencyStoreUnavailable",
    "RequestBodyInvalid",
    "RequestBodyMalformed",
    "RequestPathInvalid",
    "RequestTooLarge",
    "error_type",
    "exception_for",
    "exception_handler",
    "handle",
]
