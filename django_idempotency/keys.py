"""The ``Idempotency-Key`` header, the caller's scope, and the digests that name a record."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

MAX_KEY_LENGTH = 255
MAX_SCOPE_LENGTH = 255


class InvalidKey(ValueError):
    """The header is present but is not one acceptable key."""


def header_meta_name(header: str) -> str:
    """``Idempotency-Key`` -> ``HTTP_IDEMPOTENCY_KEY``, the WSGI environ name."""
    return "HTTP_" + header.upper().replace("-", "_")


def parse_key(raw: str) -> str:
    """The key carried by one header value, or raise :class:`InvalidKey`.

    A bare token or an RFC 8941 quoted string. Servers join repeated headers
    with commas, so a comma outside quotes means several keys: refused, not guessed.
    """
    value = raw.strip(" \t")
    if value.startswith('"'):
        key = _parse_sf_string(value)
    else:
        if "," in value:
            raise InvalidKey("several Idempotency-Key values")
        key = value
    if not key:
        raise InvalidKey("empty key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"key longer than {MAX_KEY_LENGTH} characters")
    if not key.isascii() or not key.isprintable():
        raise InvalidKey("key has characters other than printable ASCII")
    return key


def _parse_sf_string(value: str) -> str:
    out = []
    i = 1
    end = len(value)
    while i < end:
        char = value[i]
        if char == "\\":
            if i + 1 >= end or value[i + 1] not in '"\\':
                raise InvalidKey("bad escape in quoted key")
            out.append(value[i + 1])
            i += 2
            continue
        if char == '"':
            if value[i + 1 :].strip(" \t"):
                raise InvalidKey("text after the quoted key")
            return "".join(out)
        out.append(char)
        i += 1
    raise InvalidKey("unterminated quoted key")


def user_scope(request: Any) -> str | None:
    """The default scope: the authenticated user, or ``None`` (refused with 403)
    for anonymous callers, who cannot be told apart."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return f"user:{user.pk}"


def stored_scope(scope: object) -> str:
    """The scope as stored: as given, or hashed when too long for the column,
    so a long scope still owns its keys alone."""
    text = str(scope)
    # A NUL is hashed too: PostgreSQL's text columns refuse it.
    if len(text) <= MAX_SCOPE_LENGTH and "\x00" not in text:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def scoped_key(scope: str, key: str) -> str:
    """A stable identifier of (scope, key), for naming the key in a store."""
    return hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()


def record_key(scope: str, key: str, first_claimed_at: datetime) -> str:
    """``request.idempotency_key``: one value per record of (scope, key).
    ``first_claimed_at`` tells apart the records of a key reused after expiry."""
    return hashlib.sha256(f"{scope}\x00{key}\x00{instant(first_claimed_at)}".encode()).hexdigest()


def instant(moment: datetime) -> str:
    """A datetime as text that survives any store: UTC when aware, to the microsecond."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")
