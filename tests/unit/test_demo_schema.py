"""The demo's OpenAPI schema says what the demo does, status by status, field by field.

The schema is the one ``manage.py spectacular`` makes with the demo's own
settings; the behaviour is checked through the API. tests/integration/test_schemathesis.py
fuzzes the two against each other; these pin what it found, one by one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from testproject.api.models import Account, ApiKey
from tests.helpers import ROOT, SPEC_JOB

pytest.importorskip("drf_spectacular")

ENVELOPE = {"$ref": "#/components/schemas/IdempotencyError"}


@pytest.fixture(scope="module")
def demo_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("schema") / "schema.json"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings", "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "testproject/manage.py", "spectacular", "--validate", "--fail-on-warn",
         "--format", "openapi-json", "--file", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    schema: dict[str, Any] = json.loads(out.read_text())
    return schema


def component(schema: dict[str, Any], ref: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    return found


def body_schema(operation: dict[str, Any], status: str) -> dict[str, Any]:
    schema: dict[str, Any] = operation["responses"][status]["content"]["application/json"]["schema"]
    return schema


STATUSES = {
    ("/v1/jobs", "get"): {"200", "400", "401"},
    ("/v1/jobs", "post"): {"201", "400", "401", "402", "403", "409", "413", "415", "503"},
    ("/v1/jobs/{id}", "get"): {"200", "401", "404"},
    ("/v1/jobs/{id}", "patch"): {"200", "400", "401", "404", "409", "413", "415"},
    ("/v1/jobs/{id}", "delete"): {"204", "401", "404"},
    ("/v1/jobs/{id}/cancel", "post"): {"200", "400", "401", "403", "404", "409", "413", "503"},
    ("/v1/jobs/{id}/rate", "post"): {"201", "400", "401", "403", "404", "409", "413", "415", "503"},
    ("/v1/api_keys", "post"): {"201", "400", "401", "403", "409", "413", "415", "503"},
    ("/v1/webhook_endpoints", "post"): {"201", "400", "401", "403", "409", "413", "415", "503"},
    ("/v1/billing/purchase", "post"): {"201", "400", "401", "403", "409", "413", "415", "503"},
    ("/v1/account", "get"): {"200", "401"},
}


@pytest.mark.parametrize(("path", "method"), list(STATUSES))
def test_every_status_is_documented_and_every_error_is_the_envelope(
    demo_schema: dict[str, Any], path: str, method: str
) -> None:
    responses = demo_schema["paths"][path][method]["responses"]
    assert set(responses) == STATUSES[(path, method)]
    for status, response in responses.items():
        if status >= "400":
            assert body_schema(demo_schema["paths"][path][method], status) == ENVELOPE, status
            assert "Request-Id" in response["headers"], status


def test_list_envelope_and_limit(demo_schema: dict[str, Any]) -> None:
    operation = demo_schema["paths"]["/v1/jobs"]["get"]
    listing = component(demo_schema, body_schema(operation, "200"))
    assert set(listing["properties"]) == {"object", "data", "has_more"}
    assert listing["properties"]["data"]["type"] == "array"
    (limit,) = [p for p in operation["parameters"] if p["name"] == "limit"]
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}


def test_request_bodies_only_where_read_with_the_real_fields(demo_schema: dict[str, Any]) -> None:
    paths = demo_schema["paths"]
    assert "requestBody" not in paths["/v1/jobs/{id}/cancel"]["post"]
    patch = component(
        demo_schema,
        paths["/v1/jobs/{id}"]["patch"]["requestBody"]["content"]["application/json"]["schema"],
    )
    assert set(patch["properties"]) == {"description", "status"}
    status = component(demo_schema, patch["properties"]["status"])
    assert status["enum"] == ["completed"]
    purchase = component(demo_schema, body_schema(paths["/v1/billing/purchase"]["post"], "201"))
    assert set(purchase["properties"]) == {
        "id", "object", "amount_cents", "balance_cents", "created_at",
    }  # fmt: skip
    api_key = component(demo_schema, body_schema(paths["/v1/api_keys"]["post"], "201"))
    assert "secret" in api_key["properties"]


def test_text_rules_are_in_the_schema(demo_schema: dict[str, Any]) -> None:
    job = demo_schema["components"]["schemas"]["Job"]["properties"]
    assert job["description"]["minLength"] == 1
    assert not re.search(job["description"]["pattern"], "   ")
    assert not re.search(job["description"]["pattern"], "a\x00b")
    url = demo_schema["components"]["schemas"]["WebhookEndpoint"]["properties"]["url"]
    assert re.search(url["pattern"], "https://example.com/hook")
    assert not re.search(url["pattern"], "http://example.com/hook")


def test_links_from_a_created_job(demo_schema: dict[str, Any]) -> None:
    links = demo_schema["paths"]["/v1/jobs"]["post"]["responses"]["201"]["links"]
    assert set(links) == {"GetJob", "UpdateJob", "DeleteJob", "CancelJob", "RateJob"}
    operation_ids = {
        op["operationId"] for ops in demo_schema["paths"].values() for op in ops.values()
    }
    for link in links.values():
        assert link["operationId"] in operation_ids
        assert link["parameters"] == {"id": "$response.body#/id"}


# The behaviour the schema now states.


@pytest.fixture
def client(db: None) -> APIClient:
    account = Account.objects.create(user=User.objects.create_user("acme"), credits_cents=10**9)
    _, secret = ApiKey.issue(account)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return api


def post(client: APIClient, path: str, data: Any, key: str = "k") -> Any:
    return client.post(path, data, format="json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.parametrize(
    "change",
    [
        {"description": "   "},  # blank
        {"description": "a\x00b"},  # NUL
        {"description": 10},  # a number for a string
        {"files_needed": "10"},  # a string for an integer
        {"files_needed": 10.0},  # a float for an integer (JSON Schema draft 4)
        {"files_needed": True},
        {"type": ""},
    ],
)
def test_schema_invalid_job_bodies_are_refused(client: APIClient, change: dict[str, Any]) -> None:
    response = post(client, "/v1/jobs", {**SPEC_JOB, **change})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["type"] == "invalid_request"


@pytest.mark.parametrize(
    ("url", "status"),
    [("https://example.com/hook", 201), ("http://example.com/hook", 400), ("https://x", 400)],
)
def test_webhook_urls_are_https_with_a_host(client: APIClient, url: str, status: int) -> None:
    assert post(client, "/v1/webhook_endpoints", {"url": url}, key=url).status_code == status


@pytest.mark.parametrize(("query", "status"), [("", 200), ("?limit=5", 200), ("?limit=", 400),
                                               ("?limit=x", 400), ("?limit=0", 400)])  # fmt: skip
def test_list_limit(client: APIClient, query: str, status: int) -> None:
    response = client.get("/v1/jobs" + query)
    assert response.status_code == status, response.content
    if status == 200:
        assert set(response.json()) == {"object", "data", "has_more"}


def test_blank_name_and_comment_are_still_allowed(client: APIClient) -> None:
    assert post(client, "/v1/api_keys", {"name": ""}).status_code == 201


def test_debug_is_off_unless_asked_for() -> None:
    script = "from testproject import settings; print(settings.DEBUG)"
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_DEBUG", "DEBUG"}}
    env["PYTHONPATH"] = str(ROOT)
    off = subprocess.run([sys.executable, "-c", script], env={**env, "DEBUG": "1"},
                         capture_output=True, text=True, check=True)  # fmt: skip
    on = subprocess.run([sys.executable, "-c", script], env={**env, "DJANGO_DEBUG": "1"},
                        capture_output=True, text=True, check=True)  # fmt: skip
    assert (off.stdout.strip(), on.stdout.strip()) == ("False", "True")
