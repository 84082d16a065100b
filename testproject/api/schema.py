"""The demo's bearer API keys in its OpenAPI schema (drf-spectacular).

Only the authentication needs this: ``django_idempotency`` documents the
``Idempotency-Key`` header, ``Idempotent-Replayed`` and its errors by itself.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "testproject.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return build_bearer_security_scheme_object(
            header_name="HTTP_AUTHORIZATION", token_prefix="Bearer"
        )


# Postprocessing (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]): what
# drf-spectacular's decorators cannot say.

# From POST /v1/jobs's 201 to what can be done with the job it made: the
# OpenAPI links that stateful clients and fuzzers (schemathesis) follow.
JOB_LINKS = {
    "GetJob": ("/v1/jobs/{id}", "get"),
    "UpdateJob": ("/v1/jobs/{id}", "patch"),
    "DeleteJob": ("/v1/jobs/{id}", "delete"),
    "CancelJob": ("/v1/jobs/{id}/cancel", "post"),
    "RateJob": ("/v1/jobs/{id}/rate", "post"),
}

REQUEST_ID = {
    "description": "This request's id: `req_` and a ULID, also in the error body as "
    "`error.request_id`. Sent with every error.",
    "schema": {"type": "string", "pattern": "^req_[0-9A-HJKMNP-TV-Z]{26}$"},
}


def declare_links_and_request_ids(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    paths = result.get("paths", {})
    created = paths.get("/v1/jobs", {}).get("post", {}).get("responses", {}).get("201")
    if created is not None:
        links = {}
        for name, (path, method) in JOB_LINKS.items():
            operation = paths.get(path, {}).get(method)
            if operation is not None:
                links[name] = {
                    "operationId": operation["operationId"],
                    "parameters": {"id": "$response.body#/id"},
                }
        created["links"] = links
    for operations in paths.values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                if code.startswith(("4", "5")):
                    response.setdefault("headers", {}).setdefault("Request-Id", REQUEST_ID)
    return result
