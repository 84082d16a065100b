"""The demo project's API (testproject/), over HTTP with bearer API keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import override_settings
from rest_framework.test import APIClient

from testproject.api.models import Account, ApiKey, Job, hash_secret
from tests.helpers import SPEC_JOB, envelope

pytestmark = pytest.mark.django_db

SPEC_COST = 10 * 50
CREDITS = 100_000

MakeClient = Callable[..., APIClient]


@pytest.fixture
def make_client() -> MakeClient:
    """A client holding a bearer key of a new account ``name``."""

    def make(name: str = "acme", credits: int = CREDITS) -> APIClient:
        user = User.objects.create_user(name)
        account = Account.objects.create(user=user, credits_cents=credits)
        _, secret = ApiKey.issue(account)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        client.account = account  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def client(make_client: MakeClient) -> APIClient:
    return make_client()


def post(client: APIClient, path: str, data: Any = None, key: str | None = "k-1", **extra: Any):
    if key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = key
    return client.post(path, data if data is not None else {}, format="json", **extra)


def balance(client: APIClient) -> int:
    return Account.objects.get(pk=client.account.pk).credits_cents  # type: ignore[attr-defined]


def create_job(client: APIClient, key: str = "job-create-order-1234", **changes: Any) -> Any:
    response = post(client, "/v1/jobs", {**SPEC_JOB, **changes}, key=key)
    assert response.status_code == 201, response.content
    return response.json()


# Jobs


def test_create_job_reserves_credits(client: APIClient) -> None:
    response = post(client, "/v1/jobs", SPEC_JOB, key="job-create-order-1234")

    assert response.status_code == 201
    job = response.json()
    assert job == {
        "id": job["id"],
        "object": "job",
        **SPEC_JOB,
        "reserved_cents": SPEC_COST,
        "status": "open",
        "created_at": job["created_at"],
    }
    assert response["Location"] == f"/v1/jobs/{job['id']}"
    assert balance(client) == CREDITS - SPEC_COST


def test_replay_returns_the_same_bytes_and_charges_once(client: APIClient) -> None:
    first = post(client, "/v1/jobs", SPEC_JOB, key="job-create-order-1234")
    second = post(client, "/v1/jobs", SPEC_JOB, key="job-create-order-1234")

    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second["Location"] == first["Location"]
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Job.objects.count() == 1
    assert balance(client) == CREDITS - SPEC_COST


def test_changed_body_with_the_same_key_is_a_conflict(client: APIClient) -> None:
    create_job(client)

    response = post(
        client, "/v1/jobs", {**SPEC_JOB, "files_needed": 20}, key="job-create-order-1234"
    )

    error = envelope(response, 409, "idempotency_conflict")
    assert error["message"] == "A different request was already made with this idempotency key"
    assert Job.objects.count() == 1
    assert balance(client) == CREDITS - SPEC_COST


def test_two_accounts_with_one_key_get_their_own_jobs(make_client: MakeClient) -> None:
    acme, globex = make_client("acme"), make_client("globex")

    job_acme = create_job(acme, key="shared-key")
    job_globex = create_job(globex, key="shared-key")

    assert job_acme["id"] != job_globex["id"]
    assert balance(acme) == balance(globex) == CREDITS - SPEC_COST
    assert [job["id"] for job in acme.get("/v1/jobs").json()["data"]] == [job_acme["id"]]


def test_post_without_a_key_is_refused(client: APIClient) -> None:
    envelope(post(client, "/v1/jobs", SPEC_JOB, key=None), 400, "idempotency_key_missing")
    assert not Job.objects.exists()


def test_insufficient_credits_is_402_and_not_kept(make_client: MakeClient) -> None:
    client = make_client(credits=SPEC_COST - 1)

    response = post(client, "/v1/jobs", SPEC_JOB, key="order-1")
    envelope(response, 402, "insufficient_credits")
    assert balance(client) == SPEC_COST - 1

    # Raised, so not stored: after topping up, a retry with the same key runs.
    post(client, "/v1/billing/purchase", {"amount_cents": 1}, key="topup")
    assert post(client, "/v1/jobs", SPEC_JOB, key="order-1").status_code == 201
    assert balance(client) == 0


def test_list_shows_only_own_jobs_newest_first(make_client: MakeClient) -> None:
    acme, globex = make_client("acme"), make_client("globex")
    older = create_job(acme, key="a")
    newer = create_job(acme, key="b")
    create_job(globex, key="a")

    response = acme.get("/v1/jobs")

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [job["id"] for job in body["data"]] == [newer["id"], older["id"]]
    assert body["has_more"] is False
    assert acme.get("/v1/jobs?limit=1").json()["has_more"] is True


def test_another_accounts_job_is_not_found(make_client: MakeClient) -> None:
    acme, globex = make_client("acme"), make_client("globex")
    job = create_job(acme)

    assert acme.get(f"/v1/jobs/{job['id']}").json() == job
    envelope(globex.get(f"/v1/jobs/{job['id']}"), 404, "not_found")
    envelope(globex.patch(f"/v1/jobs/{job['id']}", {}, format="json"), 404, "not_found")
    envelope(globex.delete(f"/v1/jobs/{job['id']}"), 404, "not_found")
    envelope(post(globex, f"/v1/jobs/{job['id']}/cancel"), 404, "not_found")
    envelope(acme.get("/v1/jobs/not-a-number"), 404, "not_found")


def test_patch_changes_description_and_completes(client: APIClient) -> None:
    job = create_job(client)

    response = client.patch(
        f"/v1/jobs/{job['id']}", {"description": "New", "status": "completed"}, format="json"
    )

    assert response.status_code == 200
    assert response.json() == {**job, "description": "New", "status": "completed"}
    bad = client.patch(f"/v1/jobs/{job['id']}", {"status": "open"}, format="json")
    assert "status" in envelope(bad, 400, "invalid_request")["fields"]


def test_delete_refunds_an_open_job(client: APIClient) -> None:
    job = create_job(client)

    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204

    assert not Job.objects.exists()
    assert balance(client) == CREDITS


def test_cancel_refunds_and_replays(client: APIClient) -> None:
    job = create_job(client)

    first = post(client, f"/v1/jobs/{job['id']}/cancel", key="cancel-1")
    replay = post(client, f"/v1/jobs/{job['id']}/cancel", key="cancel-1")

    assert first.status_code == 200
    assert first.json() == {**job, "status": "cancelled", "reserved_cents": 0}
    assert replay.content == first.content
    assert replay["Idempotent-Replayed"] == "true"
    assert balance(client) == CREDITS


def test_cancelling_a_cancelled_job_is_a_kept_conflict(client: APIClient) -> None:
    job = create_job(client)
    post(client, f"/v1/jobs/{job['id']}/cancel", key="cancel-1")

    again = post(client, f"/v1/jobs/{job['id']}/cancel", key="cancel-2")
    replay = post(client, f"/v1/jobs/{job['id']}/cancel", key="cancel-2")

    envelope(again, 409, "job_not_cancellable")
    assert replay.content == again.content
    assert replay["Idempotent-Replayed"] == "true"
    assert balance(client) == CREDITS  # refunded once


def test_rate_a_completed_job(client: APIClient) -> None:
    job = create_job(client)
    path = f"/v1/jobs/{job['id']}/rate"
    envelope(post(client, path, {"rating": 5}, key="r-1"), 409, "job_not_completed")
    client.patch(f"/v1/jobs/{job['id']}", {"status": "completed"}, format="json")

    response = post(client, path, {"rating": 5, "comment": "Sharp photos"}, key="r-2")

    assert response.status_code == 201
    rating = response.json()
    assert rating == {
        "id": rating["id"],
        "object": "rating",
        "job": job["id"],
        "rating": 5,
        "comment": "Sharp photos",
        "created_at": rating["created_at"],
    }
    envelope(post(client, path, {"rating": 4}, key="r-3"), 409, "job_already_rated")
    error = envelope(post(client, path, {"rating": 6}, key="r-4"), 400, "invalid_request")
    assert "rating" in error["fields"]


# Other endpoints


def test_create_api_key_returns_a_working_secret_once(client: APIClient) -> None:
    response = post(client, "/v1/api_keys", {"name": "ci"})

    assert response.status_code == 201
    body = response.json()
    assert body["object"] == "api_key"
    assert body["name"] == "ci"
    assert body["secret"].startswith("fh_test_")
    assert body["secret"].startswith(body["prefix"])
    key = ApiKey.objects.get(pk=body["id"])
    assert key.secret_hash == hash_secret(body["secret"])
    assert body["secret"] not in {key.prefix, key.secret_hash}

    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {body['secret']}")
    assert other.get("/v1/account").json()["name"] == "acme"


def test_create_webhook_endpoint(client: APIClient) -> None:
    data = {"url": "https://example.com/hooks", "events": ["job.completed"]}
    response = post(client, "/v1/webhook_endpoints", data)

    assert response.status_code == 201
    body = response.json()
    assert body["object"] == "webhook_endpoint"
    assert body["url"] == data["url"]
    assert body["events"] == ["job.completed"]
    assert body["secret"].startswith("whsec_")

    plain = post(client, "/v1/webhook_endpoints", {"url": "http://example.com"}, key="k-2")
    assert "url" in envelope(plain, 400, "invalid_request")["fields"]


def test_purchase_credits(client: APIClient) -> None:
    response = post(client, "/v1/billing/purchase", {"amount_cents": 2500})

    assert response.status_code == 201
    body = response.json()
    assert body["object"] == "purchase"
    assert (body["amount_cents"], body["balance_cents"]) == (2500, CREDITS + 2500)
    assert post(client, "/v1/billing/purchase", {"amount_cents": 2500}).content == response.content
    assert balance(client) == CREDITS + 2500
    assert client.get("/v1/account").json()["balance_cents"] == CREDITS + 2500

    for amount in (0, -5, 1_000_001, "lots"):
        bad = post(client, "/v1/billing/purchase", {"amount_cents": amount}, key=f"p{amount}")
        envelope(bad, 400, "invalid_request")


# Errors


def test_validation_errors_use_the_envelope(client: APIClient) -> None:
    response = post(client, "/v1/jobs", {**SPEC_JOB, "files_needed": 0, "accepted_formats": []})

    error = envelope(response, 400, "invalid_request")
    assert set(error["fields"]) == {"files_needed", "accepted_formats"}
    assert not Job.objects.exists()
    # 400 is not kept: the corrected request may reuse the key.
    assert post(client, "/v1/jobs", SPEC_JOB).status_code == 201


def test_invalid_json_is_a_400(client: APIClient) -> None:
    response = client.post(
        "/v1/jobs", b'{"type": ', content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"
    )
    envelope(response, 400, "invalid_request")


@pytest.mark.parametrize("authorization", [None, "Bearer fh_test_nope", "Bearer", "Token abc"])
def test_requests_without_a_valid_key_are_401(authorization: str | None) -> None:
    client = APIClient()
    if authorization:
        client.credentials(HTTP_AUTHORIZATION=authorization)

    envelope(client.get("/v1/jobs"), 401, "authentication_required")
    response = post(client, "/v1/jobs", SPEC_JOB)
    envelope(response, 401, "authentication_required")
    assert response["WWW-Authenticate"].startswith("Bearer")


# The test-only delay


def test_demo_delay_is_off_by_default(client: APIClient) -> None:
    assert post(client, "/v1/jobs", SPEC_JOB, HTTP_X_DEMO_DELAY="nonsense").status_code == 201


@override_settings(DEMO_ALLOW_DELAY=True)
def test_demo_delay_when_allowed(client: APIClient) -> None:
    assert post(client, "/v1/jobs", SPEC_JOB, HTTP_X_DEMO_DELAY="0.01").status_code == 201
    bad = post(client, "/v1/jobs", SPEC_JOB, key="k-2", HTTP_X_DEMO_DELAY="-1")
    envelope(bad, 400, "invalid_request")


# The management command


def test_create_api_key_command_prints_a_working_key() -> None:
    out = StringIO()
    call_command("create_api_key", "demo", "--credits", "1234", stdout=out)
    secret = out.getvalue().splitlines()[-1]

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    account = client.get("/v1/account")
    assert account.status_code == 200
    assert json.loads(account.content) == {
        "object": "account",
        "name": "demo",
        "balance_cents": 1234,
    }

    # A second key for the same account; the balance is left alone.
    out = StringIO()
    call_command("create_api_key", "demo", stdout=out)
    assert out.getvalue().splitlines()[-1] != secret
    assert Account.objects.get().credits_cents == 1234
    assert ApiKey.objects.count() == 2
