"""Stored responses encrypted at rest (``IDEMPOTENCY_ENCRYPTION_KEYS``, docs/security.rst).

A response is sealed before ``Store.finish()`` and opened after a ``Replay``,
so every store keeps sealed responses without knowing it. A sealed response
keeps its status in clear (the admin filters by it); its headers and body
travel as one Fernet token in ``body``, and its only header is :data:`MARKER`,
a name no HTTP response can have, which names the key that sealed it. The
token also holds the status and the record's digest, so a status edited in the
table or a token copied to another record is refused rather than replayed.

Fernet (``cryptography``): authenticated, versioned tokens, and a key format
that people already generate and keep. The first key seals; every key opens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django.core import checks

from .conf import conf
from .keys import scoped_key
from .stores.base import StoredResponse

if TYPE_CHECKING:
    from cryptography.fernet import Fernet
    from django.utils.safestring import SafeString

    from .models import IdempotencyRecord
    from .stores.base import RequestRecord

logger = logging.getLogger(__name__)

#: The one header of a sealed response. A field name is a token (RFC 9110
#: section 5.1), which ":" is not: no response a view returns carries it.
MARKER = ":idempotency-sealed"
_SCHEME = "fernet"


class Unreadable(Exception):
    """A sealed response that cannot be opened here; the message says why."""


def key_id(key: str | bytes) -> str:
    """A short public name of a Fernet key, for logs and the marker (not secret:
    a hash of 256 random bits tells nothing of them)."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(b"django-idempotency key id\x00" + raw).hexdigest()[:8]


def check() -> list[checks.CheckMessage]:
    """The system checks of ``IDEMPOTENCY_ENCRYPTION_KEYS`` (never showing a key)."""
    keys = conf.raw("IDEMPOTENCY_ENCRYPTION_KEYS")
    if keys is None:
        return []
    hint = (
        "A list of keys made by cryptography's Fernet.generate_key(), the newest first, "
        "read from a secret store or the environment (docs/security.rst)."
    )
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        message = f"IDEMPOTENCY_ENCRYPTION_KEYS must be a list, not a {type(keys).__name__}."
        return [checks.Error(message, hint=hint, id="django_idempotency.E060")]
    if not keys:
        return [
            checks.Warning(
                "IDEMPOTENCY_ENCRYPTION_KEYS is empty: stored responses are kept in plaintext, "
                "and records sealed earlier cannot be replayed.",
                hint=hint + " Or remove the setting once no sealed record is left.",
                id="django_idempotency.W060",
            )
        ]
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        return [
            checks.Error(
                "IDEMPOTENCY_ENCRYPTION_KEYS needs the cryptography package.",
                hint='pip install "django-idempotency[encryption]"',
                id="django_idempotency.E061",
            )
        ]
    for index, key in enumerate(keys):
        try:
            Fernet(key)
        except (TypeError, ValueError):
            message = (
                f"IDEMPOTENCY_ENCRYPTION_KEYS[{index}] is not a Fernet key "
                "(32 url-safe base64-encoded bytes)."
            )
            return [checks.Error(message, hint=hint, id="django_idempotency.E060")]
    return []


_keyrings: dict[tuple[Any, ...], list[tuple[str, Fernet]]] = {}


def _keyring() -> list[tuple[str, Fernet]]:
    """(key id, Fernet) for each configured key, the sealing one first; empty
    when encryption is off. Built once per key list."""
    keys = tuple(conf.raw("IDEMPOTENCY_ENCRYPTION_KEYS") or ())
    if not keys:  # encryption off: every request passes here
        return []
    try:
        return _keyrings[keys]
    except KeyError:
        pass
    from cryptography.fernet import Fernet

    ring = [(key_id(key), Fernet(key)) for key in keys]
    _keyrings.clear()  # only the list in use is worth keeping
    _keyrings[keys] = ring
    return ring


def is_sealed(response: StoredResponse) -> bool:
    return len(response.headers) == 1 and response.headers[0][0] == MARKER


def seal(response: StoredResponse, scope: str, key: str) -> StoredResponse:
    """``response`` to keep: sealed with the first key, or as it is when encryption is off."""
    ring = _keyring()
    if not ring:
        return response
    sealer_id, fernet = ring[0]
    head = {"status": response.status, "headers": response.headers, "for": scoped_key(scope, key)}
    token = fernet.encrypt(json.dumps(head).encode() + b"\n" + response.body)
    return StoredResponse(response.status, [(MARKER, f"{_SCHEME} {sealer_id}")], token)


def unseal(response: StoredResponse, scope: str, key: str) -> StoredResponse:
    """The kept response as it was sealed (a plaintext one as it is); raises
    :class:`Unreadable` with the cause when it cannot be opened."""
    if not is_sealed(response):
        return response
    scheme, _, sealer_id = response.headers[0][1].partition(" ")
    if scheme != _SCHEME:
        raise Unreadable(f"it is sealed by an unknown scheme {scheme!r}")
    try:
        ring = dict(_keyring())
    except Exception as exc:  # a key list the checks refuse, or no cryptography
        raise Unreadable(f"IDEMPOTENCY_ENCRYPTION_KEYS cannot be used ({exc})") from None
    if not ring:
        raise Unreadable(
            f"it was sealed with key {sealer_id} and encryption is off "
            "(IDEMPOTENCY_ENCRYPTION_KEYS is not set, or empty)"
        )
    fernet = ring.get(sealer_id)
    if fernet is None:
        raise Unreadable(
            f"it was sealed with key {sealer_id}, which is not in IDEMPOTENCY_ENCRYPTION_KEYS "
            f"(keys {', '.join(ring)}): a key must stay listed until the records it "
            "sealed have expired"
        )
    from cryptography.fernet import InvalidToken

    try:
        head_line, _, body = fernet.decrypt(response.body).partition(b"\n")
        head = json.loads(head_line)
    except (InvalidToken, ValueError):
        raise Unreadable(
            f"its token fails authentication under key {sealer_id}: it was corrupted or altered"
        ) from None
    if head["for"] != scoped_key(scope, key) or head["status"] != response.status:
        raise Unreadable("it was sealed for another record, or its status was altered")
    return StoredResponse(response.status, [(n, v) for n, v in head["headers"]], body)


def replayable(response: StoredResponse, record: RequestRecord) -> StoredResponse | None:
    """The response to replay for ``record``, or None (logged at ERROR with the
    cause) when it cannot be opened: the request is then neither replayed with
    garbage nor run again."""
    try:
        return unseal(response, record.scope, record.key)
    except Unreadable as exc:
        logger.error(
            "Idempotency-Key %r, scope %r: the stored response of %s %s cannot be decrypted: "
            "%s. Answered 500 idempotency_record_unreadable; the view was not run again.",
            record.key,
            record.scope,
            record.method,
            record.path,
            exc,
        )
        return None


def shown_opened(
    display: Callable[[Any, IdempotencyRecord], SafeString],
) -> Callable[[Any, IdempotencyRecord], SafeString]:
    """An admin display method, given the record with its response opened, or
    replaced by "cannot be decrypted" and the cause: the admin never fails on it."""

    @functools.wraps(display)
    def wrapper(model_admin: Any, record: IdempotencyRecord) -> SafeString:
        from django.utils.html import format_html

        stored = StoredResponse(
            record.response_status or 0,
            record.headers,
            bytes(record.response_body) if record.response_body is not None else b"",
        )
        if not is_sealed(stored):
            return display(model_admin, record)
        try:
            opened = unseal(stored, record.scope, record.key)
        except Unreadable as exc:
            return format_html("<em>cannot be decrypted: {}</em>", exc)
        copy = type(record)(
            pk=record.pk,
            scope=record.scope,
            key=record.key,
            response_status=record.response_status,
            response_headers=json.dumps(opened.headers),
            response_body=opened.body,
        )
        return display(model_admin, copy)

    return wrapper
