"""gunicorn runs no system checks: with a bad setting the app refuses to
start, at start-up, instead of answering requests (the checks themselves:
tests/unit/test_settings_validation.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.servers import free_port


def test_under_gunicorn_a_bad_setting_stops_the_server_at_start_up(tmp_path: Path) -> None:
    """gunicorn runs no system checks: the app's ready() refuses to start, rather
    than answer every POST with a 500."""
    overrides = {"IDEMPOTENCY_SCOPE": "myapp.nowhere.scope", "IDEMPOTENCY_RETRY_AFTER": -1}
    environ = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_overrides",
        "TEST_SETTINGS_OVERRIDES": json.dumps(overrides),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "gunicorn", "tests.wsgi", "--workers", "1"]
    command += ["--bind", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(
        command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "Worker failed to boot" in text, text
    assert "django-idempotency's settings are invalid" in text, text
    assert "(django_idempotency.E005) IDEMPOTENCY_SCOPE 'myapp.nowhere.scope'" in text, text
    assert "(django_idempotency.E009) IDEMPOTENCY_RETRY_AFTER" in text, text
