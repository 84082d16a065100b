"""The demo's endpoints. Every mutating POST is ``@idempotent``.

Each view also opens its own ``transaction.atomic()`` around its writes: under
the database store that is only a savepoint in the decorator's transaction, but
it keeps the view correct under a store that opens none (the Redis one).
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency import idempotent

from .authentication import ApiKeyAuthentication
from .docs import answers, extend_schema, extend_schema_view, limit_parameter
from .exceptions import InsufficientCredits, JobNotOpen, error_response
from .models import Account, ApiKey, Job, Purchase, Rating
from .serializers import (
    AccountSerializer,
    ApiKeyCreatedSerializer,
    ApiKeySerializer,
    JobListSerializer,
    JobSerializer,
    JobUpdateSerializer,
    ListParamsSerializer,
    PurchaseResultSerializer,
    PurchaseSerializer,
    RatingSerializer,
    WebhookEndpointSerializer,
)

MAX_DEMO_DELAY = 30.0


def account_of(request: Request) -> Account:
    try:
        account: Account = request.user.account
    except Account.DoesNotExist:
        raise PermissionDenied("This user has no API account") from None
    return account


def _add_credits(account_id: int, cents: int) -> None:
    # F(): the database adds, so concurrent changes to the balance are never lost.
    Account.objects.filter(pk=account_id).update(credits_cents=F("credits_cents") + cents)


def _demo_delay(request: Request, header: str = "X-Demo-Delay") -> float:
    """Seconds to sleep from ``X-Demo-Delay``, for concurrency and crash tests."""
    raw = request.headers.get(header)
    if raw is None or not getattr(settings, "DEMO_ALLOW_DELAY", False):
        return 0.0
    try:
        delay = float(raw)
    except ValueError:
        delay = math.nan
    if not math.isfinite(delay) or delay < 0:
        raise ValidationError({header: ["Must be a number of seconds."]})
    return min(delay, MAX_DEMO_DELAY)


# Declared, not left to DEFAULT_AUTHENTICATION_CLASSES, so that the demo's API keys
# work wherever the app is mounted (the test suite mounts it beside its own app).
DEMO_AUTHENTICATION = [ApiKeyAuthentication]


@extend_schema_view(
    retrieve=extend_schema(responses=answers({200: JobSerializer}, 401, 404)),
)
class JobViewSet(
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    authentication_classes = DEMO_AUTHENTICATION
    serializer_class = JobSerializer

    def get_serializer_class(self) -> Any:
        # What each action takes and answers, for the OpenAPI schema.
        return RatingSerializer if self.action == "rate" else JobSerializer

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            # drf-spectacular inspects the view with no caller: the model is
            # all it needs (it gives the schema the type of {id}).
            return Job.objects.none()
        # Only the caller's own jobs exist for it: another account's job is a 404.
        return Job.objects.filter(account=account_of(self.request))

    def _locked_job(self) -> Job:
        # Locked until the transaction ends, so two concurrent cancels (with
        # different keys) cannot both refund. SQLite has no row locks; there the
        # IMMEDIATE transaction mode serialises writers instead.
        job: Job = get_object_or_404(self.get_queryset().select_for_update(), pk=self.kwargs["pk"])
        return job

    @extend_schema(
        parameters=limit_parameter(1, 100, 20),
        responses=answers({200: JobListSerializer}, 400, 401),
    )
    def list(self, request: Request) -> Response:
        params = ListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        limit: int = params.validated_data["limit"]
        jobs = list(self.get_queryset()[: limit + 1])
        return Response(
            {
                "object": "list",
                "data": JobSerializer(jobs[:limit], many=True).data,
                "has_more": len(jobs) > limit,
            }
        )

    @extend_schema(
        request=JobSerializer, responses=answers({201: JobSerializer}, 400, 401, 402, 415)
    )
    @idempotent
    def create(self, request: Request) -> Response:
        serializer = JobSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        delay = _demo_delay(request)
        cost = (
            serializer.validated_data["files_needed"]
            * serializer.validated_data["price_per_file_cents"]
        )
        account = account_of(request)
        with transaction.atomic():
            # One conditional UPDATE reserves the credits: atomic, and it cannot
            # take the balance below zero however many requests race.
            reserved = Account.objects.filter(pk=account.pk, credits_cents__gte=cost).update(
                credits_cents=F("credits_cents") - cost
            )
            if not reserved:
                # Raised, not answered: @idempotent then keeps nothing, so the
                # caller can buy credits and retry with the same key.
                raise InsufficientCredits()
            job = serializer.save(account=account, reserved_cents=cost)
            if delay:
                time.sleep(delay)
        after_commit = _demo_delay(request, "X-Demo-Delay-After-Commit")
        if after_commit:
            # Sleeps once everything is committed, before the response goes out:
            # lets crash tests kill a worker in that gap.
            transaction.on_commit(lambda: time.sleep(after_commit))
        return Response(
            JobSerializer(job).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": reverse("job-detail", args=[job.pk])},
        )

    @extend_schema(
        request=JobUpdateSerializer,
        responses=answers(
            {200: JobSerializer}, 400, 401, 404, 409, 413, 415,
            s409="`job_not_open`: only an open job can change its status",
        ),
    )  # fmt: skip
    def partial_update(self, request: Request, pk: str) -> Response:
        with transaction.atomic():
            job = self._locked_job()
            serializer = JobUpdateSerializer(job, data=request.data, partial=True)
            serializer.is_valid(raise_exception=True)
            new_status = serializer.validated_data.get("status", job.status)
            if new_status != job.status and job.status != Job.Status.OPEN:
                raise JobNotOpen(f"This job is {job.status}; only an open job can be completed")
            serializer.save()
        return Response(JobSerializer(job).data)

    @extend_schema(responses=answers({204: None}, 401, 404))
    def destroy(self, request: Request, pk: str) -> Response:
        with transaction.atomic():
            job = self._locked_job()
            if job.status == Job.Status.OPEN:
                _add_credits(job.account_id, job.reserved_cents)
            job.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=None,  # no body is read
        responses=answers(
            {200: JobSerializer}, 401, 404, 409,
            s409="`job_not_cancellable`: only an open job can be cancelled (kept, and "
            "replayed to a retry with the same key)",
        ),
    )  # fmt: skip
    @idempotent
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        with transaction.atomic():
            job = self._locked_job()
            if job.status != Job.Status.OPEN:
                # Answered, not raised: a definitive outcome, kept and replayed.
                return error_response(
                    request,
                    status.HTTP_409_CONFLICT,
                    "job_not_cancellable",
                    f"This job is {job.status}; only an open job can be cancelled",
                )
            _add_credits(job.account_id, job.reserved_cents)
            job.status = Job.Status.CANCELLED
            job.reserved_cents = 0
            job.save(update_fields=["status", "reserved_cents"])
        return Response(JobSerializer(job).data)

    @extend_schema(
        request=RatingSerializer,
        responses=answers(
            {201: RatingSerializer}, 400, 401, 404, 409, 415,
            s409="`job_not_completed` or `job_already_rated`: only a completed job can be "
            "rated, once (kept, and replayed to a retry with the same key)",
        ),
    )  # fmt: skip
    @idempotent
    @action(detail=True, methods=["post"])
    def rate(self, request: Request, pk: str) -> Response:
        with transaction.atomic():
            job = self._locked_job()
            serializer = RatingSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            if job.status != Job.Status.COMPLETED:
                return error_response(
                    request,
                    status.HTTP_409_CONFLICT,
                    "job_not_completed",
                    f"This job is {job.status}; only a completed job can be rated",
                )
            if Rating.objects.filter(job=job).exists():
                return error_response(
                    request,
                    status.HTTP_409_CONFLICT,
                    "job_already_rated",
                    "This job has already been rated",
                )
            rating = serializer.save(job=job)
        return Response(RatingSerializer(rating).data, status=status.HTTP_201_CREATED)


class ApiKeyViewSet(viewsets.GenericViewSet):  # type: ignore[type-arg]
    authentication_classes = DEMO_AUTHENTICATION
    serializer_class = ApiKeySerializer

    @extend_schema(
        request=ApiKeySerializer, responses=answers({201: ApiKeyCreatedSerializer}, 400, 401, 415)
    )
    @idempotent
    def create(self, request: Request) -> Response:
        serializer = ApiKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, secret = ApiKey.issue(account_of(request), serializer.validated_data.get("name", ""))
        # The only time the secret is shown (and, in the stored response, replayed).
        return Response(
            {**ApiKeySerializer(key).data, "secret": secret}, status=status.HTTP_201_CREATED
        )


class WebhookEndpointViewSet(viewsets.GenericViewSet):  # type: ignore[type-arg]
    authentication_classes = DEMO_AUTHENTICATION
    serializer_class = WebhookEndpointSerializer

    @extend_schema(
        request=WebhookEndpointSerializer,
        responses=answers({201: WebhookEndpointSerializer}, 400, 401, 415),
    )
    @idempotent
    def create(self, request: Request) -> Response:
        serializer = WebhookEndpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = serializer.save(
            account=account_of(request), secret="whsec_" + secrets.token_urlsafe(32)
        )
        return Response(WebhookEndpointSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class BillingViewSet(viewsets.GenericViewSet):  # type: ignore[type-arg]
    authentication_classes = DEMO_AUTHENTICATION
    serializer_class = PurchaseSerializer

    @extend_schema(
        request=PurchaseSerializer,
        responses=answers({201: PurchaseResultSerializer}, 400, 401, 415),
    )
    @idempotent
    @action(detail=False, methods=["post"])
    def purchase(self, request: Request) -> Response:
        serializer = PurchaseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        amount: int = serializer.validated_data["amount_cents"]
        account = account_of(request)
        with transaction.atomic():
            _add_credits(account.pk, amount)
            purchase = Purchase.objects.create(account=account, amount_cents=amount)
            account.refresh_from_db(fields=["credits_cents"])
        return Response(
            {
                "id": purchase.pk,
                "object": "purchase",
                "amount_cents": amount,
                "balance_cents": account.credits_cents,
                "created_at": purchase.created_at,
            },
            status=status.HTTP_201_CREATED,
        )


class AccountView(APIView):
    authentication_classes = DEMO_AUTHENTICATION
    serializer_class = AccountSerializer  # read by the OpenAPI schema only

    @extend_schema(responses=answers({200: AccountSerializer}, 401))
    def get(self, request: Request) -> Response:
        account = account_of(request)
        return Response(
            {
                "object": "account",
                "name": str(account),
                "balance_cents": account.credits_cents,
            }
        )
