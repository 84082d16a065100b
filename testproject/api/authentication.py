"""``Authorization: Bearer fh_test_...``: an API key names an account, and so its user."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from .models import ApiKey, hash_secret


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None  # not ours: let another class try, or answer 401
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <key>'")
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key") from None
        # Looked up by hash: the table holds no secrets, and a timing attack on
        # the index could only learn hashes.
        key = (
            ApiKey.objects.select_related("account__user")
            .filter(secret_hash=hash_secret(secret))
            .first()
        )
        if key is None or not key.account.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid API key")
        return key.account.user, key

    def authenticate_header(self, request: Request) -> str:
        # Having one makes DRF answer 401 rather than 403 to a missing key.
        return f'{self.keyword} realm="api"'
