"""conf keeps the values it has read until Django says a setting changed."""

from __future__ import annotations

from datetime import timedelta

from django.test import override_settings

from django_idempotency.conf import DEFAULTS, conf


def test_a_changed_setting_is_read_again_and_restored_after() -> None:
    assert DEFAULTS["IDEMPOTENCY_RETRY_AFTER"] == conf.IDEMPOTENCY_RETRY_AFTER
    with override_settings(IDEMPOTENCY_RETRY_AFTER=7, IDEMPOTENCY_TTL=60):
        assert conf.IDEMPOTENCY_RETRY_AFTER == 7
        assert timedelta(seconds=60) == conf.IDEMPOTENCY_TTL
    assert DEFAULTS["IDEMPOTENCY_RETRY_AFTER"] == conf.IDEMPOTENCY_RETRY_AFTER


def test_the_settings_fixture_is_seen(settings) -> None:  # type: ignore[no-untyped-def]
    assert conf.IDEMPOTENCY_HEADER == "Idempotency-Key"  # read: a stale value would be kept
    settings.IDEMPOTENCY_HEADER = "X-Request-Key"
    assert conf.IDEMPOTENCY_HEADER == "X-Request-Key"


def test_other_settings_leave_the_values_kept() -> None:
    conf.raw("IDEMPOTENCY_RETRY_AFTER")
    with override_settings(USE_TZ=True):
        assert "IDEMPOTENCY_RETRY_AFTER" in conf._values
