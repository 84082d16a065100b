"""A cheap bearer authentication, the same for every configuration.

``Authorization: Bearer <username>`` names one of the users that
``prepare`` creates. The user is loaded once per process and then kept, as a
stateless token (a signed JWT, say) would allow: authentication costs no SQL,
so the idempotency layer's own cost is not hidden behind an auth query. A real
per-user identity still matters, because the keys are scoped per user.

The "-token" configurations use DRF's ``TokenAuthentication`` instead (one
SELECT per request), with the keys that ``ensure_users`` gives each user.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import authentication, exceptions

_users: dict[str, Any] = {}


def ensure_users(names: list[str]) -> None:
    """Create the bench users, each with its DRF token (``configs.token_key``)."""
    from configs import token_key
    from rest_framework.authtoken.models import Token

    for name in names:
        user, _ = get_user_model().objects.get_or_create(username=name)
        key = token_key(name)
        Token.objects.filter(user=user).exclude(key=key).delete()
        Token.objects.get_or_create(key=key, defaults={"user": user})


def user_for(token: str) -> Any:
    try:
        return _users[token]
    except KeyError:
        pass
    try:
        user = get_user_model().objects.get(username=token)
    except get_user_model().DoesNotExist:
        raise exceptions.AuthenticationFailed("unknown token") from None
    _users[token] = user
    return user


class BearerAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Any) -> tuple[Any, str] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.startswith("Bearer "):
            return None
        token = header[len("Bearer ") :]
        return user_for(token), token

    def authenticate_header(self, request: Any) -> str:
        return "Bearer"
