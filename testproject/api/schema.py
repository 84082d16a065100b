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
