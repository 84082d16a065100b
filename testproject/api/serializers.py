from __future__ import annotations

import re
from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from .docs import extend_schema_serializer, string_schema
from .models import ApiKey, Job, Rating, WebhookEndpoint

# Each rule below is stated once, as a regular expression, and serves both as
# the server's validator and as the schema's "pattern", so that the OpenAPI
# schema accepts exactly what the server does (issue 17: a schema fuzzer sends
# whatever the schema allows).
_MEDIA_TYPE = RegexValidator(r"^[\w.+-]+/[\w.+*-]+$", "Enter a media type such as image/jpeg.")
_JOB_TYPE = RegexValidator(r"^[a-z][a-z0-9_]*$", "Use lower-case letters, digits and _.")
# Not blank: at least one character other than white space and control
# characters; and no NUL anywhere (PostgreSQL's text refuses it).
_NOT_BLANK = RegexValidator(
    r"^[^\x00]*[^\x00-\x20\x7f-\xa0][^\x00]*$", "This field may not be blank."
)
# (DRF answers "" of a blank-allowed field before validators run: drf-spectacular
# documents it as oneOf [this, maxLength 0], which "" then matches only once.)
_NO_NUL = RegexValidator(r"^[^\x00]+$", "Null characters are not allowed.")
# https only, with a host name that Django's URLValidator also accepts.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,18}[A-Za-z0-9])?"
_HTTPS_URL = RegexValidator(
    rf"^https://(?:{_LABEL}\.){{1,4}}[A-Za-z]{{2,24}}(?::[1-9][0-9]{{0,3}})?(?:/[!#-~]*)?$",
    "Webhook URLs must be https URLs with a host name (https://example.com/hook).",
)


class StrictCharField(serializers.CharField):
    """A string that is a JSON string: DRF's also takes 10 and 1.5 as "10" and "1.5",
    which the schema's ``type: string`` does not allow."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


def text(max_length: int, *, blank: bool = False, **kwargs: Any) -> StrictCharField:
    """A string field whose schema says what it accepts: not blank (unless
    ``blank``), no NUL, taken as sent (DRF's trimming would make "  " blank
    after the schema allowed it)."""
    if blank:
        return StrictCharField(
            max_length=max_length,
            allow_blank=True,
            trim_whitespace=False,
            validators=[_NO_NUL],
            **kwargs,
        )

    # minLength too, on a class of its own (DRF copies fields by class and arguments).
    @string_schema(maxLength=max_length, minLength=1, pattern=_NOT_BLANK.regex.pattern)
    class Text(StrictCharField):
        pass

    return Text(max_length=max_length, trim_whitespace=False, validators=[_NOT_BLANK], **kwargs)


class StrictIntegerField(serializers.IntegerField):
    """An integer that is a JSON number: DRF's also takes "10" and 10.0, which
    the schema's ``type: integer`` does not allow (OpenAPI 3.0, JSON Schema draft 4)."""

    default_error_messages = {"invalid": "A valid integer is required (a JSON number)."}

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


def _object_field(name: str) -> serializers.Field:  # type: ignore[type-arg]
    @string_schema(enum=[name], readOnly=True)
    class ObjectField(serializers.Field):  # type: ignore[type-arg]
        def __init__(self) -> None:
            super().__init__(read_only=True, source="*")

        def to_representation(self, value: Any) -> str:
            return name

    return ObjectField()


class _Resource(serializers.ModelSerializer):
    """Renders ``{"id": ..., "object": "<name>", ...}``, the API's resource shape."""

    object_name: str

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        data.pop("object", None)
        return {"id": data.pop("id"), "object": self.object_name, **data}


class JobSerializer(_Resource):
    object_name = "job"
    object = _object_field("job")
    type = StrictCharField(max_length=64, validators=[_JOB_TYPE], trim_whitespace=False)
    description = text(2000)
    files_needed = StrictIntegerField(min_value=1, max_value=10_000)
    accepted_formats = serializers.ListField(
        child=StrictCharField(max_length=100, validators=[_MEDIA_TYPE], trim_whitespace=False),
        min_length=1,
        max_length=20,
    )
    price_per_file_cents = StrictIntegerField(min_value=1, max_value=100_000)

    class Meta:
        model = Job
        fields = (
            "id",
            "object",
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
    description = text(2000, required=False)
    # The one status change a client may make: a demo shortcut so that jobs
    # can be rated without workers to complete them.
    status = serializers.ChoiceField(choices=[Job.Status.COMPLETED], required=False)

    class Meta:
        model = Job
        fields = ("description", "status")


class RatingSerializer(_Resource):
    object_name = "rating"
    object = _object_field("rating")
    rating = StrictIntegerField(min_value=1, max_value=5)
    comment = text(2000, blank=True, required=False)

    class Meta:
        model = Rating
        fields = ("id", "object", "job", "rating", "comment", "created_at")
        read_only_fields = ("job", "created_at")


class ApiKeySerializer(_Resource):
    object_name = "api_key"
    object = _object_field("api_key")
    name = text(100, blank=True, required=False)

    class Meta:
        model = ApiKey
        fields = ("id", "object", "name", "prefix", "created_at")
        read_only_fields = ("prefix", "created_at")


class ApiKeyCreatedSerializer(ApiKeySerializer):
    """What POST /v1/api_keys answers: the key, and its secret, shown this once."""

    secret = serializers.CharField(read_only=True)

    class Meta(ApiKeySerializer.Meta):
        fields = (*ApiKeySerializer.Meta.fields, "secret")


class WebhookEndpointSerializer(_Resource):
    object_name = "webhook_endpoint"
    object = _object_field("webhook_endpoint")
    url = StrictCharField(max_length=2000, validators=[_HTTPS_URL], trim_whitespace=False)
    events = serializers.ListField(child=text(100), max_length=50, required=False)

    class Meta:
        model = WebhookEndpoint
        fields = ("id", "object", "url", "events", "secret", "created_at")
        read_only_fields = ("secret", "created_at")


class PurchaseSerializer(serializers.Serializer):
    amount_cents = StrictIntegerField(min_value=1, max_value=1_000_000)


class PurchaseResultSerializer(serializers.Serializer):
    """What POST /v1/billing/purchase answers (for the OpenAPI schema)."""

    id = serializers.IntegerField(read_only=True)
    object = _object_field("purchase")
    amount_cents = serializers.IntegerField(read_only=True)
    balance_cents = serializers.IntegerField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


class AccountSerializer(serializers.Serializer):
    """What GET /v1/account answers (read-only; for the OpenAPI schema)."""

    object = _object_field("account")
    name = serializers.CharField(read_only=True)
    balance_cents = serializers.IntegerField(read_only=True)


@extend_schema_serializer(many=False)  # an envelope, not an array of them
class JobListSerializer(serializers.Serializer):
    """What GET /v1/jobs answers (for the OpenAPI schema)."""

    object = _object_field("list")
    data = JobSerializer(many=True, read_only=True)
    has_more = serializers.BooleanField(read_only=True)


class QueryIntegerField(serializers.IntegerField):
    """An integer query parameter: ``?limit=`` or ``?limit=ten`` is a 400 (DRF
    takes an empty value as absent, which ``type: integer`` does not allow)."""

    def get_value(self, dictionary: Any) -> Any:
        return dictionary.get(self.field_name, serializers.empty)

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, str) or not re.fullmatch(r"-?[0-9]{1,20}", data):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


class ListParamsSerializer(serializers.Serializer):
    limit = QueryIntegerField(min_value=1, max_value=100, default=20)
