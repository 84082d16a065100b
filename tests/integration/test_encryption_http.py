"""A retry over real HTTP (gunicorn, requests) replays the response that the
store kept encrypted, and the store holds none of it in plaintext."""

from __future__ import annotations

import json

import pytest
import requests
from cryptography.fernet import Fernet

from testproject.api.models import ApiKey
from tests.helpers import StoreUnderTest, demo_client
from tests.servers.http import gunicorn


@pytest.mark.django_db(transaction=True)
def test_a_retry_over_http_replays_the_decrypted_response(store: StoreUnderTest) -> None:
    client = demo_client("http")
    bearer = client._credentials["HTTP_AUTHORIZATION"]  # type: ignore[attr-defined]
    overrides = {"IDEMPOTENCY_ENCRYPTION_KEYS": [Fernet.generate_key().decode()]}
    env = {"TEST_IDEMPOTENCY_STORE": store.path, "TEST_SETTINGS_OVERRIDES": json.dumps(overrides)}
    with gunicorn(workers=2, env=env, settings="tests.settings_overrides") as server:
        answers = [
            requests.post(
                server.base + "/v1/api_keys",
                json={"name": "ci"},
                headers={"Authorization": bearer, "Idempotency-Key": "over-http"},
                timeout=30,
            )
            for _ in range(2)
        ]
    assert [a.status_code for a in answers] == [201, 201]
    assert answers[1].headers["Idempotent-Replayed"] == "true"
    assert answers[1].json() == answers[0].json()
    assert ApiKey.objects.filter(account=client.account, name="ci").count() == 1  # type: ignore[attr-defined]
    secret = answers[0].json()["secret"].encode()
    assert all(secret not in value for value in store.raw_values())
