from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from .models import ApiKey, Job, Rating, WebhookEndpoint

_MEDIA_TYPE = RegexValidator(r"^[\w.+-]+/[\w.+*-]+$", "Enter a media type such as image/jpeg.")
_JOB_TYPE = RegexValidator(r"^[a-z][a-z0-9_]*$", "Use lower-case letters, digits and _.")


class _Resource(serializers.ModelSerializer):
    """Renders ``{"id": ..., "object": "<name>", ...}``, the API's resource shape."""

    object_name: str

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        return {"id": data.pop("id"), "object": self.object_name, **data}


class JobSerializer(_Resource):
    object_name = "job"
    type = serializers.CharField(max_length=64, validators=[_JOB_TYPE])
    description = serializers.CharField(max_length=2000)
    files_needed = serializers.IntegerField(min_value=1, max_value=10_000)
    accepted_formats = serializers.ListField(
        child=serializers.CharField(max_length=100, validators=[_MEDIA_TYPE]),
        min_length=1,
        max_length=20,
    )
    price_per_file_cents = serializers.IntegerField(min_value=1, max_value=100_000)

    class Meta:
        model = Job
        fields = (
            "id",
            "type",
            "description",
            "files_needed",
            "accepted_formats",
            "price_per_file_cents",
            "reserved_cents",
            "status",
            "created_at",
        )
        read_only_fields = ("reserved_cents", "status", "created_at")


class JobUpdateSerializer(serializers.ModelSerializer):
    description = serializers.CharField(max_length=2000, required=False)
    # The one status change a client may make: a demo shortcut so that jobs
    # can be rated without workers to complete them.
    status = serializers.ChoiceField(choices=[Job.Status.COMPLETED], required=False)

    class Meta:
        model = Job
        fields = ("description", "status")


class RatingSerializer(_Resource):
    object_name = "rating"
    rating = serializers.IntegerField(min_value=1, max_value=5)
    comment = serializers.CharField(max_length=2000, required=False, allow_blank=True)

    class Meta:
        model = Rating
        fields = ("id", "job", "rating", "comment", "created_at")
        read_only_fields = ("job", "created_at")


class ApiKeySerializer(_Resource):
    object_name = "api_key"
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)

    class Meta:
        model = ApiKey
        fields = ("id", "name", "prefix", "created_at")
        read_only_fields = ("prefix", "created_at")


class WebhookEndpointSerializer(_Resource):
    object_name = "webhook_endpoint"
    events = serializers.ListField(
        child=serializers.CharField(max_length=100), max_length=50, required=False
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("id", "url", "events", "secret", "created_at")
        read_only_fields = ("secret", "created_at")

    def validate_url(self, value: str) -> str:
        if not value.lower().startswith("https://"):
            raise serializers.ValidationError("Webhook URLs must use https.")
        return value


class PurchaseSerializer(serializers.Serializer):
    amount_cents = serializers.IntegerField(min_value=1, max_value=1_000_000)


class AccountSerializer(serializers.Serializer):
    """What GET /v1/account answers (read-only; for the OpenAPI schema)."""

    object = serializers.CharField(read_only=True, default="account")
    name = serializers.CharField(read_only=True)
    balance_cents = serializers.IntegerField(read_only=True)


class ListParamsSerializer(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)
