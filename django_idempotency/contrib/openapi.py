"""drf-spectacular documentation of ``@idempotent`` operations: a view extension,
imported by the app config when drf-spectacular is installed (docs/openapi.rst)."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent, get_class
from rest_framework.viewsets import ViewSetMixin

from .. import errors
from ..conf import conf
from ..decorators import GUARDED_METHODS
from ..keys import MAX_KEY_LENGTH
from ..responses import REPLAYED_HEADER, kept

ERROR_COMPONENT = "IdempotencyError"


def idempotent_options(handler: Any) -> tuple[bool, timedelta | None] | None:
    """``(required, ttl)`` of an ``@idempotent`` handler, or ``None``, through
    ``functools.wraps`` chains and ``@api_view``'s generated class."""
    marked = _marked(handler, closures=True)
    if marked is None:
        return None
    return bool(getattr(marked, "_idempotent_required", True)), getattr(
        marked, "_idempotent_ttl", None
    )


def _marked(function: Any, closures: bool) -> Any:
    for _ in range(20):  # a decorator chain longer than this is not a real one
        if function is None:
            return None
        function = getattr(function, "__func__", function)
        if getattr(function, "_idempotent", False):
            return function
        function = getattr(function, "__wrapped__", None) or (
            _api_view_function(function) if closures else None
        )
    return None


def _api_view_function(handler: Any) -> Any:
    # No public link from @api_view's class to the function: its methods close
    # over it. Cells are read by what they hold (our mark), not by name.
    for cell in getattr(handler, "__closure__", None) or ():
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(content) and _marked(content, closures=False) is not None:
            return content
    return None


class IdempotentSchemaMixin:
    """Adds the idempotency header, response headers and errors to guarded
    operations, mixed into a drf-spectacular ``AutoSchema``."""

    view: Any
    registry: Any

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any
    ) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(  # type: ignore[misc]
            path, path_regex, path_prefix, method, registry
        )
        if operation is None or method.upper() not in GUARDED_METHODS:
            return operation
        options = idempotent_options(_handler(self.view, method))
        if options is not None:
            required, ttl = options
            document_operation(operation, self.registry, required=required, ttl=ttl)
        return operation


def _handler(view: Any, method: str) -> Any:
    if isinstance(view, ViewSetMixin) and getattr(view, "action", None):
        return getattr(view, view.action, None)
    return getattr(view, method.lower(), None)


def document_operation(
    operation: dict[str, Any], registry: Any, *, required: bool, ttl: timedelta | None
) -> None:
    """Add what ``@idempotent`` does to one operation, in place; what the view
    documents itself stays (an error of the same status goes beside it, ``oneOf``)."""
    header = conf.IDEMPOTENCY_HEADER
    parameters = operation.setdefault("parameters", [])
    if not any(
        p.get("in") == "header" and str(p.get("name", "")).lower() == header.lower()
        for p in parameters
    ):
        parameters.append(_key_parameter(header, required, ttl))

    responses = operation.setdefault("responses", {})
    component = ResolvedComponent(  # type: ignore[no-untyped-call]
        name=ERROR_COMPONENT,
        type=ResolvedComponent.SCHEMA,
        object=ERROR_COMPONENT,
        schema=_envelope_schema(),
    )
    registry.register_on_missing(component)
    for status, types in _errors_by_status(required).items():
        _add_error_response(responses, status, types, component.ref)

    # After our errors: a status of ours that the view answers too is replayable.
    request_id = _request_id_header(required)
    for code, response in responses.items():
        headers = response.setdefault("headers", {})
        if _replayable(code):
            headers.setdefault(REPLAYED_HEADER, _REPLAYED_HEADER_OBJECT)
        headers.setdefault(errors.REQUEST_ID_HEADER, request_id)


def _key_parameter(header: str, required: bool, ttl: timedelta | None) -> dict[str, Any]:
    remembered = _duration(ttl if ttl is not None else conf.IDEMPOTENCY_TTL)
    description = (
        "A key of the client's choosing, unique to this operation (for example a UUID), "
        f"1 to {MAX_KEY_LENGTH} printable ASCII characters, bare or as a quoted string. "
        "Retrying with the same key and the same request returns the stored response "
        f"(with `{REPLAYED_HEADER}: true`) instead of running the operation again; the "
        f"same key with a different request is a 409. Keys are remembered for {remembered}."
    )
    if not required:
        description += " Optional: without it the request is not protected against retries."
    # No example: one key shared by every operation's examples is a 409 from
    # the second operation on.
    return {
        "in": "header",
        "name": header,
        "required": required,
        "description": description,
        "schema": key_schema(),
    }


# What keys.parse_key accepts (a bare key without comma, or an RFC 8941 quoted
# string), in a pattern ECMA-262 and Python read alike; stricter at the edges,
# never looser (tests/unit/test_openapi.py checks it against parse_key).
_BARE_KEY = r"[\x21\x23-\x2B\x2D-\x7E](?:[\x20-\x2B\x2D-\x7E]*[\x21-\x2B\x2D-\x7E])?"
_QUOTED_KEY = r'"(?:[\x20\x21\x23-\x5B\x5D-\x7E]|\\[\x22\x5C])+"'
KEY_PATTERN = f"^(?:{_BARE_KEY}|{_QUOTED_KEY})$"


def key_schema() -> dict[str, Any]:
    """The JSON schema of the idempotency key header's value."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": KEY_PATTERN,
    }


_REPLAYED_HEADER_OBJECT = {
    "description": "Present, and `true`, only when this response is the stored response of "
    "an earlier request with the same key (of any status the server keeps, errors of the "
    "operation included): the operation did not run again.",
    "schema": {"type": "string", "enum": ["true"]},
}
_REQUEST_ID_PATTERN = "^req_[0-9A-HJKMNP-TV-Z]{26}$"


def _request_id_header(required: bool) -> dict[str, Any]:
    when = (
        "Sent on every error of the idempotency layer and every response the view returns"
        if required
        else "Sent on every error of the idempotency layer, and on every response the view "
        "returns to a request that carried a key"
    )
    when += " (an error that the view raises carries it when the exception handler adds it)"
    return {
        "description": f"This request's id: `req_` and a ULID. {when}. An error's body "
        "carries the same id as `error.request_id`, except in a replayed response "
        "(`Idempotent-Replayed: true`): its body is the stored one, byte for byte, so its "
        "`request_id` is the original request's, while this header is the retry's.",
        "schema": {"type": "string", "pattern": _REQUEST_ID_PATTERN},
    }


_RETRY_AFTER_HEADER_OBJECT = {
    "description": "With `idempotency_key_in_use` and `idempotency_store_unavailable`: "
    "seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}
_SHOULD_RETRY_HEADER_OBJECT = {
    "description": "Whether the same request, with the same key, can succeed if sent again: "
    "`true` for `idempotency_key_in_use` and `idempotency_store_unavailable`, else `false`.",
    "schema": {"type": "string", "enum": ["true", "false"]},
}


def _replayable(code: str) -> bool:
    # "default" or "2XX" may cover a stored status.
    return not code.isdigit() or kept(int(code))


def _errors_by_status(required: bool) -> dict[int, list[errors.ErrorType]]:
    by_status: dict[int, list[errors.ErrorType]] = {}
    for error in errors.API_ERRORS:
        if error is errors.KEY_MISSING and not required:
            continue
        by_status.setdefault(error.status, []).append(error)
    return dict(sorted(by_status.items()))


def _envelope_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The error envelope of every error this API answers with.",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "type": {
                        "type": "string",
                        "description": "Stable, for programs. The idempotency errors are: "
                        + ", ".join(f"`{e.type}`" for e in errors.API_ERRORS)
                        + ".",
                        "example": errors.CONFLICT.type,
                    },
                    "message": {"type": "string", "description": "For people."},
                    "request_id": {
                        "type": "string",
                        "pattern": _REQUEST_ID_PATTERN,
                        "description": "The id of the request that this error answered, "
                        "also sent as the `Request-Id` response header (in a replayed "
                        "response: the original request's id; the header is the retry's).",
                        "example": "req_01JDZ8Q9X6V7Y2T3R4S5A6B7C8",
                    },
                },
                "required": ["type", "message", "request_id"],
            }
        },
        "required": ["error"],
    }


def _add_error_response(
    responses: dict[str, Any], status: int, types: list[errors.ErrorType], ref: dict[str, str]
) -> None:
    examples = {
        error.type: {
            "summary": error.message,
            "value": {
                "error": {
                    "type": error.type,
                    "message": error.message,
                    "request_id": "req_01JDZ8Q9X6V7Y2T3R4S5A6B7C8",
                }
            },
        }
        for error in types
    }
    description = "; ".join(f"`{error.type}`: {error.message}" for error in types)
    headers: dict[str, Any] = {}
    for name in conf.IDEMPOTENCY_SHOULD_RETRY_HEADERS:
        headers[name] = _SHOULD_RETRY_HEADER_OBJECT
    if any(error.retryable for error in types):
        headers["Retry-After"] = _RETRY_AFTER_HEADER_OBJECT
    existing = responses.get(str(status))
    if existing is None:
        responses[str(status)] = {
            "description": description,
            "headers": headers,
            "content": {"application/json": {"schema": ref, "examples": examples}},
        }
        return
    # The view documents this status itself: offer our envelope beside its schema.
    media = existing.setdefault("content", {}).setdefault("application/json", {})
    schema = media.get("schema")
    if schema is None:
        media["schema"] = ref
    elif schema != ref and ref not in schema.get("oneOf", []):
        media["schema"] = {"oneOf": [schema, ref]}
    if f"Or {description}" in existing.get("description", ""):
        return  # documented already (the mixin ran twice)
    if "example" not in media:
        media.setdefault("examples", {}).update(examples)
    existing["description"] = f"{existing.get('description', '')} Or {description}".strip()
    for name, value in headers.items():
        existing.setdefault("headers", {}).setdefault(name, value)


def _duration(ttl: timedelta) -> str:
    seconds = int(ttl.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            if unit == "day" and count == 1:
                return "24 hours"
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


class IdempotentViewExtension(OpenApiViewExtension):  # type: ignore[no-untyped-call]
    """Documents every view with an ``@idempotent`` POST handler: a subclass
    whose handlers carry :class:`IdempotentSchemaMixin` on their own schema
    class, built on any other extension's replacement of the view."""

    target_class = "rest_framework.views.APIView"
    match_subclasses = True
    priority = 100

    def view_replacement(self) -> type:
        base = self._other_replacement()
        handlers = {}
        for name in self._post_handler_names():
            handler = getattr(base, name, None)
            if handler is None or idempotent_options(handler) is None:
                continue
            schema_class = _schema_class(base, handler)
            if schema_class is None:
                continue
            handlers[name] = _with_schema(handler, schema_class)
        if not handlers:
            return base
        return type(base.__name__, (base,), {"__module__": base.__module__, **handlers})

    def _post_handler_names(self) -> list[str]:
        actions = getattr(self.target_callback, "actions", None)
        if actions:  # a viewset route: {"post": "create"}
            return [name for method, name in actions.items() if method.upper() in GUARDED_METHODS]
        return [method.lower() for method in GUARDED_METHODS]

    def _other_replacement(self) -> type:
        for extension in other_view_extensions(self.target):
            replacement: type = extension(self.target_callback).view_replacement()
            return replacement
        return self.target  # type: ignore[no-any-return]


def other_view_extensions(view_class: type) -> list[type]:
    """The view extensions other than ours that match ``view_class``, best first,
    from drf-spectacular's private registry (no public way to list them)."""
    registry = getattr(OpenApiViewExtension, "_registry", None)
    if registry is None:
        return []
    return [
        extension
        for extension in sorted(registry, key=lambda e: e.priority, reverse=True)
        if not issubclass(extension, IdempotentViewExtension)
        and getattr(extension, "_matches", lambda target: False)(view_class)
    ]


def _schema_class(view_class: type, handler: Any) -> type | None:
    own = getattr(handler, "kwargs", None) or {}
    base = get_class(own.get("schema") or view_class.schema)  # type: ignore[attr-defined]
    if not issubclass(base, AutoSchema):
        return None  # not drf-spectacular's: it will say so itself
    if issubclass(base, IdempotentSchemaMixin):
        return base
    return type(f"Idempotent{base.__name__}", (IdempotentSchemaMixin, base), {})


def _with_schema(handler: Any, schema_class: type) -> Any:
    """A stand-in for ``handler`` that carries ``schema_class``, for schema generation only."""
    function = getattr(handler, "__func__", handler)

    @functools.wraps(function)
    def documented(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    # A new dict: functools.wraps shares the original's, which must stay untouched.
    documented.kwargs = {**(getattr(function, "kwargs", None) or {}), "schema": schema_class}  # type: ignore[attr-defined]
    return documented
