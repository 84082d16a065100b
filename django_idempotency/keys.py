"""Reading and validating the key, the caller's scope, and the request fingerprint.

Nothing here knows about DRF: it works on Django's ``HttpRequest``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

MAX_KEY_LENGTH = 255
# Deeper JSON is refused: Python's parsers recurse once per level, so a body
# nested near the interpreter's recursion limit makes the view (DRF's
# JSONParser, serializers) fail with RecursionError, a 500. serde_json's
# default limit is 128 too; real API payloads nest a few levels.
MAX_JSON_DEPTH = 128


class InvalidKey(ValueError):
    """The header is present but is not one acceptable key."""


class InvalidBody(ValueError):
    """The body is JSON nested deeper than :data:`MAX_JSON_DEPTH`.

    The view could fail on it with a ``RecursionError`` (a 500) when it parsed the
    body, so the request is refused before anything is stored.
    """


def header_meta_name(header: str) -> str:
    """``Idempotency-Key`` -> ``HTTP_IDEMPOTENCY_KEY``, the WSGI environ name."""
    return "HTTP_" + header.upper().replace("-", "_")


def parse_key(raw: str) -> str:
    """Return the key carried by one header value, or raise :class:`InvalidKey`.

    Accepts a bare token (``job-create-order-1234``) or the quoted string of the
    IETF draft (``"job-create-order-1234"``, an RFC 8941 sf-string). Servers fold
    repeated headers into one value joined by commas, so a comma outside quotes
    means the client sent several keys, which is refused rather than guessed at.
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
    """The default scope: the authenticated user, or ``None`` for anonymous callers.

    ``None`` makes the decorator refuse the request with 403
    ``idempotency_scope_unavailable``: anonymous callers cannot be told apart, and
    sharing one scope between them would replay one stranger's response to another.
    Set ``IDEMPOTENCY_SCOPE`` to serve anonymous callers (for example by API client).
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return f"user:{user.pk}"


MAX_SCOPE_LENGTH = 255


def stored_scope(scope: object) -> str:
    """The scope as stored: the scope function's value, or a hash of it when it
    is longer than the column (so a long scope still owns its keys alone)."""
    text = str(scope)
    # A NUL is hashed too: PostgreSQL's text columns refuse it.
    if len(text) <= MAX_SCOPE_LENGTH and "\x00" not in text:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def scoped_key(scope: str, key: str) -> str:
    """A stable identifier of (scope, key), for naming the key in a store."""
    return hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()


def record_key(scope: str, key: str, first_claimed_at: datetime) -> str:
    """``request.idempotency_key``: one value per record of (scope, key), safe to
    pass on as another system's idempotency key. ``first_claimed_at`` (when the
    first attempt claimed the key) tells apart the records of a key that was
    reused after its record expired; every attempt of one record shares it."""
    return hashlib.sha256(f"{scope}\x00{key}\x00{instant(first_claimed_at)}".encode()).hexdigest()


def instant(moment: datetime) -> str:
    """A datetime as text that survives a round trip through any store: UTC
    when aware (USE_TZ), as is when naive, to the microsecond."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def fingerprint(method: str, path: str, query: str, content_type: str, body: bytes) -> str:
    """A hash of what makes two requests "the same request", from the raw body.

    JSON bodies are canonicalised first, so key order and white space do not
    matter; any other body, or JSON that does not parse, is hashed as bytes
    together with its media type. JSON nested deeper than
    :data:`MAX_JSON_DEPTH` raises :class:`InvalidBody`. (The decorator
    fingerprints forms by :func:`canonical_form` instead: see
    :func:`fingerprint_content`.)
    """
    return fingerprint_content(method, path, query, canonical_body(content_type, body))


def fingerprint_content(method: str, path: str, query: str, content: bytes) -> str:
    """The fingerprint of a request whose body is ``content``, a canonical form
    made by :func:`canonical_body`, :func:`canonical_json` or :func:`canonical_form`."""
    digest = hashlib.sha256()
    digest.update(f"{method}\n{path}\n{query}\n".encode("utf-8", "surrogateescape"))
    digest.update(content)
    return digest.hexdigest()


def media_type_of(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def canonical_body(content_type: str, body: bytes) -> bytes:
    """A raw body's canonical form: canonical JSON, or the bytes and media type."""
    media_type = media_type_of(content_type)
    canonical = _canonical_json(body) if is_json(media_type) else None
    if canonical is not None:
        return b"json\n" + canonical
    return f"raw {media_type}\n".encode("utf-8", "surrogateescape") + body


def canonical_json(data: Any) -> bytes:
    """The canonical form of JSON that a parser already read from the body: the
    same bytes :func:`canonical_body` gives for that body."""
    if _too_deep(None, data):
        raise InvalidBody("JSON nested too deeply")
    return b"json\n" + _dumps(data)


def canonical_form(fields: Iterable[tuple[str, list[str]]], files: Iterable[FormFile]) -> bytes:
    """The canonical form of a form (urlencoded or multipart) as it was parsed:
    every field with all its values in order, and every file by field name, file
    name, content type and SHA-256 of its bytes. Never the multipart boundary,
    nor the encoding, nor the order between different fields (as JSON objects'
    key order does not count); the order of one field's values and files does.
    """
    content = {
        "fields": sorted([name, list(values)] for name, values in fields),
        # sorted() is stable: the files of one field keep their order.
        "files": [
            [f.field, f.name, f.content_type, f.sha256]
            for f in sorted(files, key=lambda f: f.field)
        ],
    }
    return b"form\n" + _dumps(content)


@dataclass(frozen=True)
class FormFile:
    """One uploaded file of a form, as :func:`canonical_form` takes it."""

    field: str
    name: str
    content_type: str
    sha256: str


def file_sha256(chunks: Iterable[bytes]) -> str:
    """The SHA-256 of a file read in ``chunks``, never holding it whole."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _canonical_json(body: bytes) -> bytes | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidBody("JSON nested too deeply") from None
    except (ValueError, TypeError):
        return None
    if _too_deep(body, data):
        raise InvalidBody("JSON nested too deeply")
    return _dumps(data)


# json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
# the canonical form, with one encoder for every call instead of one per call.
_canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _dumps(data: Any) -> bytes:
    return _canonical_encoder.encode(data).encode("utf-8", "surrogatepass")


def _too_deep(body: bytes | None, data: Any) -> bool:
    # Each level needs an opening bracket: most bodies are cleared by a count
    # done in C, and only the rest are walked (without recursion).
    if body is not None and body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        # A scalar has no children: canonical_json() may be given one (a body of `5`).
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
