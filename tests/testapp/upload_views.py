"""Upload endpoints for the real-client tests (tests/integration/test_forms_http.py).

Each answers with what its own parse of the request gave (every field with all
its values, every file's name, type and SHA-256), so a test sees that the
decorator's parse for the fingerprint left the view's parse intact; each run
creates one Widget, so a test counts runs by counting rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.contrib.auth import authenticate, login
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt, csrf_protect, ensure_csrf_cookie
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.parsers import BaseParser, FileUploadParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency import idempotent

from .models import Widget


def _received(data: Any, files: Any, user: Any) -> dict[str, Any]:
    widget = Widget.objects.create(name="upload", owner=getattr(user, "username", ""))
    return {
        "run": widget.pk,
        "fields": [[name, data.getlist(name)] for name in data],
        "files": [
            [field, f.name, f.content_type, _sha256(f)]
            for field in files
            for f in files.getlist(field)
        ],
    }


def _sha256(upload: Any) -> str:
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    return digest.hexdigest()


class UploadView(APIView):
    """A DRF view: token or session (with DRF's CSRF check) authentication."""

    authentication_classes = [TokenAuthentication, SessionAuthentication]

    @idempotent
    def post(self, request: Request) -> Response:
        return Response(_received(request.POST, request.FILES, request.user), status=201)


def _token_user(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Authenticate a plain Django view's caller by DRF's token header."""

    def wrapper(request: HttpRequest) -> HttpResponse:
        try:
            found = TokenAuthentication().authenticate(request)  # type: ignore[arg-type]
        except AuthenticationFailed:
            found = None
        request.user = found[0] if found else AnonymousUser()
        return view(request)

    return wrapper


def _plain_upload(request: HttpRequest) -> HttpResponse:
    return JsonResponse(_received(request.POST, request.FILES, request.user), status=201)


#: A plain Django view behind Django's CSRF protection, for session callers:
#: the CSRF check reads request.POST (so the multipart stream) before the decorator.
plain_upload = csrf_protect(idempotent(_plain_upload))
#: The same view for token callers, without CSRF (no cookies involved).
plain_upload_token = csrf_exempt(_token_user(idempotent(_plain_upload)))


@ensure_csrf_cookie
@csrf_protect
def login_view(request: HttpRequest) -> HttpResponse:
    """GET: a csrftoken cookie. POST username and password (with the CSRF token): a session."""
    if request.method != "POST":
        return JsonResponse({})
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return JsonResponse({}, status=403)
    login(request, user)
    return JsonResponse({"user": user.get_username()})


class TextParser(BaseParser):
    """A parser that reads the stream itself (as DRF's own JSON and form parsers
    no longer do): plain text, as a string."""

    media_type = "text/plain"

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        return stream.read().decode("utf-8")


class MergePatchParser(BaseParser):
    """A JSON media type with its own parser, not DRF's JSONParser: it reads the stream."""

    media_type = "application/merge-patch+json"

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        return json.loads(stream.read())


class StreamParsedView(APIView):
    """A DRF view whose parsers read the stream, behind session authentication:
    DRF's CSRF check parses the body before the decorator runs."""

    authentication_classes = [TokenAuthentication, SessionAuthentication]
    parser_classes = [TextParser, MergePatchParser, FileUploadParser]

    @idempotent
    def post(self, request: Request, filename: str = "") -> Response:
        widget = Widget.objects.create(name="parsed", owner=request.user.username)
        return Response({"run": widget.pk}, status=201)


def _read_first(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A wrapper (say, a middleware-like logger) that reads the body from the stream."""

    def wrapper(request: HttpRequest) -> HttpResponse:
        request.read()
        return view(request)

    return wrapper


#: A plain Django view whose body something read from the stream before the decorator.
plain_read_first = csrf_exempt(_read_first(idempotent(_plain_upload)))
