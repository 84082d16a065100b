"""Signals and log lines for each outcome (a store outage too is logged, not
only answered 503), and the recipes in docs/monitoring.rst."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient, override_settings
from rest_framework.test import APIClient

from django_idempotency import signals
from django_idempotency.errors import get_request_id
from django_idempotency.models import IdempotencyRecord
from django_idempotency.stores.base import StoreError
from django_idempotency.stores.database import DatabaseStore
from tests.helpers import post
from tests.unit.test_async import apost

pytestmark = pytest.mark.django_db

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring.rst"
LOGGER = "django_idempotency.decorators"


@pytest.fixture
def sent() -> Iterator[list[dict[str, Any]]]:
    """Every signal sent, as its keyword arguments plus its name."""
    events: list[dict[str, Any]] = []

    def record(sender: Any, *, signal: signals.Outcome, **kwargs: Any) -> None:
        events.append({"name": signal.name, "sender": sender, **kwargs})

    for outcome in signals.ALL:
        outcome.connect(record, dispatch_uid="test-signals")
    yield events
    for outcome in signals.ALL:
        outcome.disconnect(dispatch_uid="test-signals")


def names(events: list[dict[str, Any]]) -> list[str]:
    return [event["name"] for event in events]


def test_claimed_stored_replayed_conflict(
    client_alice: APIClient, alice: User, sent: list[dict[str, Any]]
) -> None:
    first = post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
    assert names(sent) == ["claimed", "stored"]
    claimed, stored = sent
    assert claimed["sender"] is DatabaseStore
    assert claimed["scope"] == f"user:{alice.pk}"
    assert (claimed["key"], claimed["method"], claimed["path"]) == ("k1", "POST", "/t/widgets")
    assert get_request_id(claimed["request"]) == first["Request-Id"]
    assert stored["status"] == 201

    sent.clear()
    post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
    post(client_alice, "/t/widgets", {"name": "other"}, key="k1")
    assert names(sent) == ["replayed", "conflict"]
    assert sent[0]["status"] == 201


def test_in_use(client_alice: APIClient, sent: list[dict[str, Any]]) -> None:
    post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
    # As if the first request were still running.
    IdempotencyRecord.objects.update(state="in_flight")
    sent.clear()
    assert post(client_alice, "/t/widgets", {"name": "a"}, key="k1").status_code == 409
    assert names(sent) == ["in_use"]


def test_released_by_status_and_by_exception(
    client_alice: APIClient, sent: list[dict[str, Any]]
) -> None:
    assert post(client_alice, "/t/apiview", {"outcome": "503"}, key="s").status_code == 503
    assert names(sent) == ["claimed", "released"]
    assert (sent[1]["status"], sent[1]["exception"]) == (503, None)

    sent.clear()
    client_alice.raise_request_exception = False
    assert post(client_alice, "/t/apiview", {"outcome": "raise"}, key="e").status_code == 500
    assert names(sent) == ["claimed", "released"]
    assert sent[1]["status"] is None
    assert isinstance(sent[1]["exception"], RuntimeError)


class BrokenStore(DatabaseStore):
    def begin(self, record: Any) -> Any:
        try:
            raise ConnectionRefusedError("connection refused")
        except ConnectionRefusedError as exc:
            raise StoreError("the store is down") from exc


def test_a_store_failure_is_a_signal_and_an_error_log_with_its_cause(
    client_alice: APIClient, sent: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(IDEMPOTENCY_STORE=f"{__name__}.BrokenStore"):
        response = post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
    assert response.status_code == 503
    assert names(sent) == ["store_unavailable"]
    assert isinstance(sent[0]["exception"], StoreError)
    (line,) = [r for r in caplog.records if r.name == LOGGER]
    assert line.levelno == logging.ERROR
    assert "BrokenStore failed (the store is down); answered 503 to POST /t/widgets" in (
        line.getMessage()
    )
    assert line.exc_info is not None
    assert isinstance(line.exc_info[1].__cause__, ConnectionRefusedError)


def test_outcomes_are_logged_at_debug(
    client_alice: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
        post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == LOGGER)
    assert [line.split(":")[0] for line in lines] == [
        "Idempotency-Key claimed",
        "Idempotency-Key stored",
        "Idempotency-Key replayed",
    ]
    assert "POST /t/widgets, key 'k1'" in lines[0]
    assert lines[1].endswith("status 201")


def test_nothing_is_logged_below_error_by_default(
    client_alice: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
    assert [r for r in caplog.records if r.name.startswith("django_idempotency")] == []


def test_a_failing_receiver_never_reaches_the_client(
    client_alice: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> None:
        raise ValueError("metrics are down")

    signals.claimed.connect(broken)
    try:
        response = post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
    finally:
        signals.claimed.disconnect(broken)
    assert response.status_code == 201
    assert IdempotencyRecord.objects.get().state == "completed"
    (line,) = [r for r in caplog.records if r.name == LOGGER]
    assert "A receiver of django_idempotency.signals.claimed failed" in line.getMessage()


# The recipes of docs/monitoring.rst, run as written.


def recipe(marker: str) -> str:
    docutils_core = pytest.importorskip("docutils.core")
    from docutils import nodes

    doctree = docutils_core.publish_doctree(
        MONITORING.read_text(encoding="utf-8"),
        settings_overrides={"syntax_highlight": "none", "report_level": 5},
    )
    blocks = [
        node.astext()
        for node in doctree.findall(nodes.literal_block)
        if "python" in node.get("classes", []) and marker in node.astext()
    ]
    assert len(blocks) == 1, f"one python block with {marker!r} in docs/monitoring.rst"
    return blocks[0]


def run_recipe(marker: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "recipe"}
    exec(compile(recipe(marker), str(MONITORING), "exec"), namespace)
    return namespace


def test_prometheus_recipe(client_alice: APIClient) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    recipe_ns = run_recipe("prometheus_client")
    try:
        post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
        post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
        post(client_alice, "/t/widgets", {"name": "b"}, key="k1")
        post(client_alice, "/t/apiview", {"outcome": "422"}, key="k2")
        text = prometheus_client.generate_latest().decode()
    finally:
        for outcome in signals.ALL:
            outcome.disconnect(dispatch_uid="idempotency-prometheus")
        prometheus_client.REGISTRY.unregister(recipe_ns["IDEMPOTENCY_REQUESTS"])
    for outcome, view, count in [
        ("claimed", "widget-list", 1),
        ("stored", "widget-list", 1),
        ("replayed", "widget-list", 1),
        ("conflict", "widget-list", 1),
        ("claimed", "tests.testapp.views.WidgetAPIView", 1),
        ("released", "tests.testapp.views.WidgetAPIView", 1),
    ]:
        sample = f'idempotency_requests_total{{outcome="{outcome}",view="{view}"}} {count}.0'
        assert sample in text, text


def test_structured_log_recipe(
    client_alice: APIClient, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    recipe_ns = run_recipe("extra=")  # receivers are weak references: keep them
    try:
        with caplog.at_level(logging.INFO, logger="myproject.idempotency"):
            response = post(client_alice, "/t/widgets", {"name": "a"}, key="k1")
    finally:
        for outcome in signals.ALL:
            outcome.disconnect(dispatch_uid="idempotency-audit")
    del recipe_ns
    fields = [r.idempotency for r in caplog.records if r.name == "myproject.idempotency"]
    assert fields == [
        {
            "outcome": outcome,
            "request_id": response["Request-Id"],
            "scope": f"user:{alice.pk}",
            "key": "k1",
            "method": "POST",
            "path": "/t/widgets",
            "status": status,
            "error": None,
            "store": "DatabaseStore",
        }
        for outcome, status in [("claimed", None), ("stored", 201)]
    ]


def test_an_async_view_sends_the_same_signals(alice: User, sent: list[dict[str, Any]]) -> None:
    client = AsyncClient()
    client.force_login(alice)
    assert apost(client, "/t/async", {"name": "a"}, key="a1").status_code == 201
    assert apost(client, "/t/async", {"name": "a"}, key="a1").status_code == 201
    assert names(sent) == ["claimed", "stored", "replayed"]
    assert {event["path"] for event in sent} == {"/t/async"}
