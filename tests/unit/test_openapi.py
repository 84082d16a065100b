"""The OpenAPI schema that drf-spectacular makes of @idempotent views, with no code in them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from django.urls import path as route
from rest_framework import serializers, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency import idempotent

pytest.importorskip("drf_spectacular")

from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from drf_spectacular.validation import validate_schema
from hypothesis import given
from hypothesis import strategies as st

from django_idempotency.contrib.openapi import KEY_PATTERN, key_schema
from django_idempotency.keys import InvalidKey, parse_key

ROOT = Path(__file__).resolve().parents[2]
ERROR_REF = {"$ref": "#/components/schemas/IdempotencyError"}


def generate(patterns: list[Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = SchemaGenerator(patterns=patterns).get_schema(public=True)
    validate_schema(schema)  # a valid OpenAPI document, by the official JSON schema
    return schema


def key_parameter(operation: dict[str, Any], name: str = "Idempotency-Key") -> dict[str, Any]:
    found = [
        p for p in operation.get("parameters", []) if p["in"] == "header" and p["name"] == name
    ]
    assert len(found) == 1, operation.get("parameters")
    return found[0]


def error_types(response: dict[str, Any]) -> set[str]:
    return set(response["content"]["application/json"]["examples"])


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    # tests/settings.py sets DEFAULT_SCHEMA_CLASS, as drf-spectacular asks; nothing else.
    return generate()


# The test app's views: every supported way of decorating.
GUARDED = [
    ("/t/widgets", True),  # viewset create
    ("/t/widgets/{id}/rename", True),  # @idempotent above @action
    ("/t/widgets/{id}/touch", True),  # @action above @idempotent
    ("/t/function", True),  # below @api_view
    ("/t/apiview", False),  # APIView.post, required=False
]


@pytest.mark.parametrize(("path", "required"), GUARDED)
def test_guarded_post_documents_the_key_header(
    schema: dict[str, Any], path: str, required: bool
) -> None:
    parameter = key_parameter(schema["paths"][path]["post"])
    assert parameter["required"] is required
    assert parameter["schema"]["type"] == "string"
    assert "24 hours" in parameter["description"]


@pytest.mark.parametrize(("path", "required"), GUARDED)
def test_guarded_post_documents_headers_and_errors(
    schema: dict[str, Any], path: str, required: bool
) -> None:
    responses = schema["paths"][path]["post"]["responses"]
    success = next(code for code in responses if code.startswith("2"))
    assert set(responses[success]["headers"]) == {"Idempotent-Replayed", "Request-Id"}
    assert responses[success]["headers"]["Idempotent-Replayed"]["schema"]["enum"] == ["true"]
    for code in ("400", "403", "409", "413", "503"):
        assert responses[code]["content"]["application/json"]["schema"] == ERROR_REF
        assert "Request-Id" in responses[code]["headers"]
    assert error_types(responses["409"]) == {"idempotency_conflict", "idempotency_key_in_use"}
    assert "Retry-After" in responses["409"]["headers"]
    assert "Retry-After" in responses["503"]["headers"]
    assert "Retry-After" not in responses["400"]["headers"]
    for code in ("400", "403", "409", "413", "503"):
        assert responses[code]["headers"]["X-Should-Retry"]["schema"]["enum"] == ["true", "false"]
    expected_400 = {"idempotency_key_invalid", "request_body_invalid", "request_path_invalid"} | (
        {"idempotency_key_missing"} if required else set()
    )
    assert error_types(responses["400"]) == expected_400
    assert error_types(responses["503"]) == {"idempotency_store_unavailable"}


def test_the_one_envelope_component(schema: dict[str, Any]) -> None:
    envelope = schema["components"]["schemas"]["IdempotencyError"]
    assert envelope["required"] == ["error"]
    assert envelope["properties"]["error"]["required"] == ["type", "message", "request_id"]
    example = schema["paths"]["/t/widgets"]["post"]["responses"]["409"]["content"][
        "application/json"
    ]["examples"]["idempotency_conflict"]["value"]
    assert example["error"]["message"] == (
        "A different request was already made with this idempotency key"
    )


def test_unguarded_operations_are_untouched(schema: dict[str, Any]) -> None:
    for path, method in [
        ("/t/widgets", "get"),
        ("/t/widgets/{id}", "patch"),
        ("/t/function", "get"),
    ]:
        operation = schema["paths"][path][method]
        assert not [p for p in operation.get("parameters", []) if p["in"] == "header"]
        assert "409" not in operation["responses"]
        for response in operation["responses"].values():
            assert "Idempotent-Replayed" not in response.get("headers", {})


def test_demo_api_posts_are_documented(schema: dict[str, Any]) -> None:
    # tests.urls serves the demo project's API too.
    for path in ["/v1/jobs", "/v1/jobs/{id}/cancel", "/v1/billing/purchase", "/v1/api_keys"]:
        assert key_parameter(schema["paths"][path]["post"])["required"] is True
    assert "parameters" not in schema["paths"]["/v1/account"]["get"]


@override_settings(IDEMPOTENCY_HEADER="X-Request-Key", IDEMPOTENCY_TTL=timedelta(hours=2))
def test_header_name_and_ttl_come_from_settings() -> None:
    operation = generate()["paths"]["/t/widgets"]["post"]
    parameter = key_parameter(operation, "X-Request-Key")
    assert "2 hours" in parameter["description"]


@pytest.mark.parametrize(
    ("ttl", "said"),
    [
        (timedelta(seconds=90), "90 seconds"),
        (timedelta(minutes=1), "1 minute"),
        (timedelta(days=1), "24 hours"),
        (timedelta(days=7), "7 days"),
    ],
)
def test_the_ttl_is_documented_in_its_largest_whole_unit(ttl: timedelta, said: str) -> None:
    with override_settings(IDEMPOTENCY_TTL=ttl):
        operation = generate()["paths"]["/t/widgets"]["post"]
    assert f"{said}" in key_parameter(operation)["description"]


# Views that also use drf-spectacular's own decorators, in each order.


class ThingSerializer(serializers.Serializer):
    name = serializers.CharField()


class ThingViewSet(viewsets.GenericViewSet):  # type: ignore[type-arg]
    serializer_class = ThingSerializer
    lookup_value_regex = "[0-9]+"

    @extend_schema(summary="Make a thing", responses={201: ThingSerializer})
    @idempotent(ttl=timedelta(minutes=30))
    def create(self, request: Any) -> Response:
        return Response(status=201)

    @idempotent
    @extend_schema(
        summary="Send a thing",
        responses={
            202: ThingSerializer,
            409: OpenApiResponse(ThingSerializer, description="Already sent"),
        },
    )
    @action(detail=True, methods=["post"])
    def send(self, request: Any, pk: str) -> Response:
        return Response(status=202)


class DocumentedHeaderView(APIView):
    @extend_schema(
        request=ThingSerializer,
        responses={201: ThingSerializer},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key", str, OpenApiParameter.HEADER, required=True, description="Mine"
            )
        ],
    )
    @idempotent
    def post(self, request: Any) -> Response:
        return Response(status=201)


@extend_schema(request=ThingSerializer, responses={201: ThingSerializer}, summary="Fn")
@api_view(["POST"])
@idempotent(required=False)
def thing_function(request: Any) -> Response:
    return Response(status=201)


class ReplacedView(APIView):
    @idempotent
    def post(self, request: Any) -> Response:
        return Response(status=201)


class ReplacedViewExtension(OpenApiViewExtension):
    """Another extension on the same view: both must apply."""

    target_class = ReplacedView

    def view_replacement(self) -> type:
        class Fixed(self.target_class):  # type: ignore[name-defined,misc]
            serializer_class = ThingSerializer

        return Fixed


def test_works_with_extend_schema_and_other_view_extensions() -> None:
    from rest_framework.routers import SimpleRouter

    router = SimpleRouter(trailing_slash=False)
    router.register("things", ThingViewSet, basename="thing")
    patterns = [
        *router.urls,
        route("documented", DocumentedHeaderView.as_view()),
        route("function", thing_function),
        route("replaced", ReplacedView.as_view()),
    ]
    paths = generate(patterns)["paths"]

    create = paths["/things"]["post"]
    assert create["summary"] == "Make a thing"  # @extend_schema kept
    assert "30 minutes" in key_parameter(create)["description"]  # ttl=
    assert "Idempotent-Replayed" in create["responses"]["201"]["headers"]

    send = paths["/things/{id}/send"]["post"]
    assert send["summary"] == "Send a thing"
    assert key_parameter(send)["required"] is True
    # The view's own 409 stays, with the envelope offered beside it.
    conflict = send["responses"]["409"]
    assert conflict["description"].startswith("Already sent")
    assert ERROR_REF in conflict["content"]["application/json"]["schema"]["oneOf"]

    documented = paths["/documented"]["post"]
    assert key_parameter(documented)["description"] == "Mine"  # not overwritten nor doubled
    assert "400" in documented["responses"]

    function = paths["/function"]["post"]
    assert function["summary"] == "Fn"
    assert key_parameter(function)["required"] is False

    replaced = paths["/replaced"]["post"]
    assert "requestBody" in replaced  # the other extension's serializer_class applied
    assert key_parameter(replaced)["required"] is True


@pytest.mark.slow
def test_demo_project_serves_its_schema_and_swagger_ui_offline(tmp_path: Path) -> None:
    """testproject's own settings: a valid schema without a warning, and local Swagger UI."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    env.pop("DATABASE_URL", None)
    schema_file = tmp_path / "schema.json"
    generated = subprocess.run(
        [sys.executable, "testproject/manage.py", "spectacular", "--validate", "--fail-on-warn",
         "--format", "openapi-json", "--file", str(schema_file)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    demo = json.loads(schema_file.read_text())
    job_create = demo["paths"]["/v1/jobs"]["post"]
    assert key_parameter(job_create)["required"] is True
    assert "Idempotent-Replayed" in job_create["responses"]["201"]["headers"]
    assert job_create["responses"]["409"]["content"]["application/json"]["schema"] == ERROR_REF
    assert demo["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"

    served = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert served.returncode == 0, served.stderr
    pages = json.loads(served.stdout)
    assert pages["schema"][0] == 200
    assert "/v1/jobs" in json.loads(pages["schema"][1])["paths"]
    assert pages["docs"][0] == 200
    docs = pages["docs"][1]
    assert "swagger-ui" in docs and "/v1/schema" in docs
    assert "cdn.jsdelivr.net" not in docs and "/static/drf_spectacular_sidecar/" in docs


SERVE_SCRIPT = """
import json, django
django.setup()
from django.test import Client
client = Client()
schema = client.get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
docs = client.get("/v1/docs")
print(json.dumps({
    "schema": [schema.status_code, schema.content.decode()],
    "docs": [docs.status_code, docs.content.decode()],
}))
"""


def test_package_works_without_drf_spectacular(tmp_path: Path) -> None:
    """With drf-spectacular missing, the app loads and the extension is not imported."""
    script = """
import sys
sys.modules["drf_spectacular"] = None  # as if not installed: importing it fails
import django
django.setup()
from django.core.management import call_command
import django_idempotency
from tests.testapp import views
call_command("check")
assert "django_idempotency.contrib.openapi" not in sys.modules
print("ok")
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    # Django 6's checks may open the database: a scratch one, not the test run's.
    env.pop("DATABASE_URL", None)
    env["SQLITE_TEST_FILE"] = str(tmp_path / "check.sqlite3")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


# The key's schema states the server's rule, checked against parse_key.

KEY_RE = re.compile(KEY_PATTERN)


def accepted(value: str) -> bool:
    try:
        parse_key(value)
    except InvalidKey:
        return False
    return True


def schema_allows(value: str) -> bool:
    schema = key_schema()
    return schema["minLength"] <= len(value) <= schema["maxLength"] and bool(
        KEY_RE.fullmatch(value)
    )


@given(st.from_regex(KEY_PATTERN, fullmatch=True).filter(lambda v: len(v) <= 255))
def test_every_key_the_schema_allows_is_accepted(value: str) -> None:
    # What a generator makes from the pattern (schemathesis, a client's
    # generated validation) is never refused by the server.
    assert accepted(value), value


ascii_text = st.text(st.characters(min_codepoint=0x00, max_codepoint=0x80), max_size=300)
near_keys = (
    ascii_text
    | st.text(st.sampled_from('ab ,"\\\t\x00\x7f'), max_size=12)
    | ascii_text.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
)


@given(near_keys)
def test_the_schema_and_the_server_agree_on_any_value(value: str) -> None:
    if value == value.strip(" \t") and len(value) <= 255:
        assert schema_allows(value) == accepted(value), value
    # Beyond that the schema is stricter, never looser: white space around the
    # value (HTTP strips it before the server sees it) and quoted keys whose
    # quotes and escapes take the header past 255 characters.
    elif schema_allows(value):
        raise AssertionError(value)


@pytest.mark.parametrize(
    "value",
    ["job-create-order-1234", '"job-create-order-1234"', '"a,b"', 'say "hi"', "a b", "x" * 255],
)
def test_key_examples_allowed(value: str) -> None:
    assert schema_allows(value) and accepted(value)


@pytest.mark.parametrize(
    "value", ["", "a,b", "a\tb", "caf\u00e9", "x" * 256, '"unterminated', '"a"b', "a\x00"]
)
def test_key_examples_refused_by_both(value: str) -> None:
    assert not schema_allows(value) and not accepted(value)


def guarded_operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"POST {path}", ops["post"])
        for path, ops in document["paths"].items()
        if "post" in ops
        and any(p["name"] == "Idempotency-Key" for p in ops["post"].get("parameters", []))
    ]


def test_no_example_key_is_shared_by_operations(schema: dict[str, Any]) -> None:
    examples = [
        json.dumps(p.get("example", p.get("examples")))
        for _, op in guarded_operations(schema)
        for p in op["parameters"]
        if p["name"] == "Idempotency-Key" and ("example" in p or "examples" in p)
    ]
    assert len(examples) == len(set(examples)), examples


def test_replayed_and_request_id_headers_on_every_status_they_can_have(
    schema: dict[str, Any],
) -> None:
    operations = guarded_operations(schema)
    assert len(operations) >= 6
    for name, operation in operations:
        for code, response in operation["responses"].items():
            headers = response.get("headers", {})
            assert "Request-Id" in headers, (name, code)
            # Every status below 500 that is not released is stored and can be replayed.
            replayable = int(code) < 500 and int(code) not in {400, 401, 403, 422, 429}
            assert ("Idempotent-Replayed" in headers) is replayable, (name, code)
        request_id = operation["responses"]["409"]["headers"]["Request-Id"]["description"]
        assert "replayed" in request_id and "original request" in request_id


def test_api_view_functions_are_found_through_drf() -> None:
    """DRF has no public link from @api_view's class to the function: the
    extension reads the handler's closure by content. Fails if DRF changes that."""
    from django_idempotency.contrib.openapi import idempotent_options

    @api_view(["POST"])
    @idempotent(required=False)
    def view(request: Any) -> Response:
        return Response(status=201)

    assert idempotent_options(view.cls.post) == (False, None)  # type: ignore[attr-defined]


def test_drf_spectacular_registry_still_lists_view_extensions() -> None:
    """The one private drf-spectacular API the extension reads (to stack on
    another view extension): fails on a release that renames it."""
    from django_idempotency.contrib.openapi import other_view_extensions

    assert other_view_extensions(ReplacedView) == [ReplacedViewExtension]
    assert other_view_extensions(ThingViewSet) == []


# idempotent_options: what the extension documents, decided by the handler alone.


def _unguarded(request: Any) -> Response:  # pragma: no cover - never called
    return Response(status=201)


def _wrapping(function: Any) -> Any:
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        return function(*args, **kwargs)

    return wrapper


def _with_an_empty_cell() -> Any:
    later = _unguarded

    def handler(request: Any) -> Any:  # pragma: no cover - never called
        return later(request)  # noqa: F821 - deleted below, so its cell is empty

    del later
    return handler


def _cyclic() -> Any:
    def handler(request: Any) -> Any:  # pragma: no cover - never called
        return None

    handler.__wrapped__ = handler  # type: ignore[attr-defined]
    return handler


def test_unguarded_handlers_are_not_documented() -> None:
    from django_idempotency.contrib.openapi import idempotent_options

    @api_view(["POST"])
    def drf_function(request: Any) -> Response:  # pragma: no cover - never called
        return Response(status=201)

    guarded_below_others = _wrapping(_wrapping(idempotent(ttl=timedelta(hours=2))(_unguarded)))
    assert idempotent_options(guarded_below_others) == (True, timedelta(hours=2))
    assert idempotent_options(_unguarded) is None
    assert idempotent_options(None) is None
    assert idempotent_options(_wrapping(_unguarded)) is None
    # An @api_view function that is not guarded: its closure holds an unmarked function.
    assert idempotent_options(drf_function.cls.post) is None  # type: ignore[attr-defined]
    # A closure with an empty cell.
    assert idempotent_options(_with_an_empty_cell()) is None


def test_a_cyclic_wraps_chain_is_not_followed_forever() -> None:
    from django_idempotency.contrib.openapi import idempotent_options

    assert idempotent_options(_cyclic()) is None

    cycle = _cyclic()

    def holder(request: Any) -> Any:  # pragma: no cover - never called
        return cycle(request)

    assert idempotent_options(holder) is None
