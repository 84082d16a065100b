from __future__ import annotations

import json

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


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
            models.UniqueConstraint(
                fields=["scope", "key"], name="django_idempotency_scope_key_uniq"
            ),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="django_idemp_expires_idx"),
            models.Index(fields=["created_at"], name="django_idemp_created_idx"),
            # The admin's search by key across callers; the unique index leads with scope.
            models.Index(fields=["key"], name="django_idemp_key_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.scope})"

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name, value) for name, value in json.loads(self.response_headers or "[]")]

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()
