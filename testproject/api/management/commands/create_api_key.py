"""``create_api_key NAME [--credits N]``: an account (made if missing) and a new key.

The bearer key is the last line of output, alone, so scripts can take it with
``tail -n 1``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from ...models import Account, ApiKey

DEFAULT_CREDITS = 100_000


class Command(BaseCommand):
    help = "Create an API key for the account NAME, creating the account if needed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="account (and user) name")
        parser.add_argument(
            "--credits",
            type=int,
            default=DEFAULT_CREDITS,
            help=f"credits in cents of a new account (default {DEFAULT_CREDITS}); "
            "an existing account keeps its balance",
        )

    def handle(self, *args: Any, name: str, credits: int, **options: Any) -> None:
        if credits < 0:
            raise CommandError("--credits must not be negative")
        user_model = get_user_model()
        with transaction.atomic():
            user, new_user = user_model.objects.get_or_create(**{user_model.USERNAME_FIELD: name})
            if new_user:
                # An API-only user: it signs in with keys, never with a password.
                user.set_unusable_password()
                user.save(update_fields=["password"])
            account, created = Account.objects.get_or_create(
                user=user, defaults={"credits_cents": credits}
            )
            key, secret = ApiKey.issue(account, name="create_api_key")
        self.stdout.write(
            f"{'Created' if created else 'Using'} account {name!r} "
            f"({account.credits_cents} cents of credits); new key {key.prefix}…"
        )
        self.stdout.write(secret)
