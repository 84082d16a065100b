"""The demo's accounts, API keys and the resources of its endpoints."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

API_KEY_PREFIX = "fh_test_"
# Enough of the key to recognise it in a list, far too little to guess the rest.
VISIBLE_PREFIX_LENGTH = len(API_KEY_PREFIX) + 4


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Account(models.Model):
    """A customer: its credits, its keys and its jobs. Its user is the idempotency scope."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="account"
    )
    # Positive: the database itself refuses a negative balance (a CHECK constraint).
    credits_cents = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.user.get_username()


class ApiKey(models.Model):
    """A bearer key. Only its SHA-256 is kept; the secret is shown once, at creation."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=VISIBLE_PREFIX_LENGTH)
    secret_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.account})"

    @classmethod
    def issue(cls, account: Account, name: str = "") -> tuple[ApiKey, str]:
        """Create a key for ``account``; return it and its secret, which is not stored."""
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(
            account=account,
            name=name,
            prefix=secret[:VISIBLE_PREFIX_LENGTH],
            secret_hash=hash_secret(secret),
        )
        return key, secret


class Job(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        COMPLETED = "completed"
        CANCELLED = "cancelled"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="jobs")
    type = models.CharField(max_length=64)
    description = models.TextField()
    files_needed = models.PositiveIntegerField()
    accepted_formats = models.JSONField(default=list)
    price_per_file_cents = models.PositiveIntegerField()
    # Taken from the account's credits at creation; given back if the job is cancelled.
    reserved_cents = models.PositiveBigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"


class Rating(models.Model):
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="rating")
    rating = models.PositiveSmallIntegerField()
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.rating}/5 for job {self.job_id}"


class WebhookEndpoint(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    # Kept in clear: the server needs it to sign the events it sends.
    secret = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.url


class Purchase(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="purchases")
    amount_cents = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.amount_cents} cents for {self.account}"
