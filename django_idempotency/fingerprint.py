"""The request fingerprint: a hash of method, path, query and the body in canonical form.

JSON is canonicalised (key order and white space do not count), forms are taken
as Django parsed them (the boundary and field order do not count), anything
else is hashed as bytes with its media type. docs/requests.rst says what counts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    BadRequest,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, RawPostDataException
from django.http.multipartparser import MultiPartParserError

from . import errors
from .errors import IdempotencyError, is_drf_request

# Python's parsers recurse once per level: deeper JSON would make the view fail
# with RecursionError (a 500), so it is refused first.
MAX_JSON_DEPTH = 128
FORM_MEDIA_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


class InvalidBody(ValueError):
    """The body is JSON nested deeper than :data:`MAX_JSON_DEPTH`."""


@dataclass(frozen=True)
class FormFile:
    """One uploaded file of a form, as :func:`canonical_form` takes it."""

    field: str
    name: str
    content_type: str
    sha256: str


def request_fingerprint(request: Any, http_request: HttpRequest) -> str:
    """The fingerprint of a request as the view will read it.

    Raises :class:`IdempotencyError`: too large (413), malformed or too deep (400).
    """
    try:
        content = _content(request, http_request)
    except (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent):
        raise IdempotencyError(errors.REQUEST_TOO_LARGE) from None
    except (MultiPartParserError, BadRequest):
        raise IdempotencyError(errors.BODY_MALFORMED) from None
    except InvalidBody:
        raise IdempotencyError(errors.BODY_INVALID) from None
    query = http_request.META.get("QUERY_STRING", "")
    return fingerprint_content(http_request.method or "POST", http_request.path, query, content)


def fingerprint_content(method: str, path: str, query: str, content: bytes) -> str:
    """The fingerprint of a request whose body has the canonical form ``content``."""
    digest = hashlib.sha256()
    digest.update(f"{method}\n{path}\n{query}\n".encode("utf-8", "surrogateescape"))
    digest.update(content)
    return digest.hexdigest()


def _content(request: Any, http_request: HttpRequest) -> bytes:
    # Forms come from Django's own parse (request.POST, request.FILES), which
    # the view reads too, wherever that parse happened: one path, one fingerprint.
    _check_size(http_request)
    media_type = http_request.content_type or ""
    if media_type in FORM_MEDIA_TYPES and _view_parses(request, http_request):
        return _form_content(http_request)
    try:
        return canonical_body(http_request.META.get("CONTENT_TYPE", ""), http_request.body)
    except RawPostDataException:
        pass
    # Something read the stream before the decorator ran (DRF's CSRF check
    # parses with the view's parsers): the bytes are gone, take that parse.
    if media_type in FORM_MEDIA_TYPES:
        return _form_content(http_request)
    if not is_drf_request(request):
        raise MultiPartParserError("the request body was read before @idempotent")
    if is_json(media_type_of(http_request.META.get("CONTENT_TYPE", ""))):
        return canonical_json(request.data)
    return _parsed_content(media_type, request.data, request.FILES)


def _check_size(http_request: HttpRequest) -> None:
    # HttpRequest.body applies DATA_UPLOAD_MAX_MEMORY_SIZE, a body read from
    # the stream does not. Multipart files are streamed to disk: not limited.
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None or http_request.content_type == "multipart/form-data":
        return
    if int(http_request.META.get("CONTENT_LENGTH") or 0) > limit:
        raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")


def _view_parses(request: Any, http_request: HttpRequest) -> bool:
    # A DRF view without a parser for the form answers 415 from its own parse,
    # which must find the body unread.
    if not is_drf_request(request) or hasattr(http_request, "_post"):
        return True
    return request.negotiator.select_parser(request, request.parsers) is not None


def _form_content(http_request: HttpRequest) -> bytes:
    fields = [(name, http_request.POST.getlist(name)) for name in http_request.POST]
    files = [
        _form_file(field, upload)
        for field in http_request.FILES
        for upload in http_request.FILES.getlist(field)
    ]
    return canonical_form(fields, files)


def _form_file(field: str, upload: Any) -> FormFile:
    digest = file_sha256(upload.chunks())  # in chunks: large files are on disk
    upload.seek(0)  # for the view
    return FormFile(field, upload.name or "", upload.content_type or "", digest)


def _parsed_content(media_type: str, data: Any, files: Any) -> bytes:
    """Another media type that a DRF parser read from the stream: its fields and files."""
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


def media_type_of(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def canonical_body(content_type: str, body: bytes) -> bytes:
    """A raw body's canonical form: canonical JSON, or the bytes and media type."""
    media_type = media_type_of(content_type)
    canonical = _canonical_json(body) if is_json(media_type) else None
    if canonical is not None:
        return b"json\n" + canonical
    return f"raw {media_type}\n".encode("utf-8", "surrogateescape") + body


def canonical_json(data: Any) -> bytes:
    """The canonical form of parsed JSON: what :func:`canonical_body` gives for its body."""
    if _too_deep(None, data):
        raise InvalidBody("JSON nested too deeply")
    return b"json\n" + _dumps(data)


def canonical_form(fields: Iterable[tuple[str, list[str]]], files: Iterable[FormFile]) -> bytes:
    """The canonical form of a parsed form: fields sorted by name, each field's
    values and files in their order."""
    content = {
        "fields": sorted([name, list(values)] for name, values in fields),
        # sorted() is stable: the files of one field keep their order.
        "files": [
            [f.field, f.name, f.content_type, f.sha256]
            for f in sorted(files, key=lambda f: f.field)
        ],
    }
    return b"form\n" + _dumps(content)


def file_sha256(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


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


# One encoder for every call rather than one per json.dumps().
_canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _dumps(data: Any) -> bytes:
    return _canonical_encoder.encode(data).encode("utf-8", "surrogatepass")


def _too_deep(body: bytes | None, data: Any) -> bool:
    # Each level needs an opening bracket: a count done in C clears most
    # bodies; only the rest are walked, without recursion.
    if body is not None and body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
