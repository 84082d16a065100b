from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .keys import scoped_key


class IdempotencyRecord(models.Model):
    """One idempotency key of one caller, and the response that answered it."""

    class State(models.TextChoices):
        IN_FLIGHT = "in_flight", _("in flight")
        COMPLETED = "completed", _("completed")
        # A failed attempt (it raised, or answered 5xx): kept until the request's
        # TTL ends only so that its retry gets the same request.idempotency_key.
        RELEASED = "released", _("released")

    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(_("scope"), max_length=255, help_text=_("Whose key this is."))
    key = models.CharField(_("idempotency key"), max_length=255)
    # What the store looks a record up by. scope and key stay readable for the
    # admin, but their columns compare by the database's collation, which on
    # MySQL and MariaDB ignores case and trailing spaces: two callers or two keys
    # would be one record. Lowercase hex compares exactly under every collation.
    digest = models.CharField(
        _("digest"),
        max_length=64,
        help_text=_("SHA-256 of the scope and the key, which finds the record byte for byte."),
    )
    fingerprint = models.CharField(
        _("request fingerprint"),
        max_length=64,
        help_text=_("SHA-256 of the method, path, query string and (canonical) body."),
    )
    method = models.CharField(_("method"), max_length=16)
    path = models.TextField(_("path"))
    state = models.CharField(
        _("state"), max_length=16, choices=State.choices, default=State.IN_FLIGHT
    )
    response_status = models.PositiveSmallIntegerField(_("response status"), null=True)
    # JSON text of [[name, value], ...]: kept as text so that the store's raw SQL
    # reads and writes it the same way on every database backend.
    response_headers = models.TextField(_("response headers"), default="[]")
    response_body = models.BinaryField(_("response body"), null=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"))

    class Meta:
        verbose_name = _("idempotency record")
        verbose_name_plural = _("idempotency records")
        constraints = [
            models.UniqueConstraint(fields=["digest"], name="django_idempotency_digest_uniq"),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="django_idemp_expires_idx"),
            models.Index(fields=["created_at"], name="django_idemp_created_idx"),
            # The admin's search by key across callers.
            models.Index(fields=["key"], name="django_idemp_key_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.scope})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Whoever writes a record through the ORM (a fixture, a data migration)
        # gets the digest that the store finds it by.
        self.digest = scoped_key(self.scope, self.key)
        super().save(*args, **kwargs)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name, value) for name, value in json.loads(self.response_headers or "[]")]

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()
