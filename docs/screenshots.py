#!/usr/bin/env python
"""Screenshots of the idempotency admin for the docs, taken in a real browser.

    .venv/bin/python docs/screenshots.py            # docs/admin-list.png, docs/admin-detail.png
    python docs/screenshots.py -django4.2           # docs/admin-list-django4.2.png, ...

Run it once with the newest Django (the unsuffixed files, which the README and
the docs show) and once in a virtualenv with Django 4.2 LTS, with that suffix.
Pages are 1280 px wide with Django's navigation sidebar open, as most people
see the admin.

Makes a throw-away SQLite copy of the demo project (testproject), stores a few
responses by calling its API with Idempotency-Key headers, serves it on a free
local port and takes each page with headless Chromium (Debian: ``apt-get
install chromium``; set CHROMIUM to another binary). The browser is logged in
as a superuser by a session cookie that the server adds to each request, so
nothing is typed into the login form.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import timedelta
from io import StringIO
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="idempotency-shots-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'db.sqlite3'}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    os.environ.setdefault("DEBUG", "1")  # runserver-style static files for the admin
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    try:
        session = populate()
        shoot(session, sys.argv[1] if len(sys.argv) > 1 else "")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def populate() -> str:
    """Stores some responses through the demo API; returns a superuser's session key."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from django_idempotency.models import IdempotencyRecord

    call_command("migrate", verbosity=0)
    clients = {}
    for name in ("acme", "globex"):
        out = StringIO()
        call_command("create_api_key", name, stdout=out)
        secret = out.getvalue().strip().splitlines()[-1]
        clients[name] = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")

    def post(account: str, path: str, key: str, body: dict) -> dict:
        response = clients[account].post(
            path, json.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
        )
        return json.loads(response.content or b"{}")

    job = {
        "type": "transcription",
        "description": "Transcribe 12 interviews",
        "files_needed": 12,
        "accepted_formats": ["audio/mpeg"],
        "price_per_file_cents": 250,
    }
    first = post("acme", "/v1/jobs", "job-create-order-1234", job)
    post("acme", "/v1/billing/purchase", "purchase-2024-11-27-001", {"amount_cents": 5000})
    post("globex", "/v1/jobs", "8f14e45f-ceea-4e7a-9f5a-3c1b2d4e6f70", {**job, "files_needed": 3})
    post("acme", f"/v1/jobs/{first['id']}/cancel", "cancel-order-1234", {})
    post(
        "globex",
        "/v1/webhook_endpoints",
        "webhook-setup-1",
        {"url": "https://globex.example/hooks"},
    )
    post("acme", "/v1/jobs", "job-create-order-1199", {**job, "files_needed": 2})
    post("acme", "/v1/api_keys", "create-ci-key", {"name": "ci deploys"})
    # A record from yesterday: expired, waiting for purge_idempotency_keys.
    day_ago = timezone.now() - timedelta(hours=26)
    IdempotencyRecord.objects.filter(key="job-create-order-1199").update(
        created_at=day_ago, expires_at=day_ago + timedelta(hours=24)
    )

    admin = User.objects.create_superuser("admin", "admin@example.com", "admin")
    store = SessionStore()
    store[SESSION_KEY] = str(admin.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = admin.get_session_auth_hash()
    store.create()
    return store.session_key


def shoot(session: str, suffix: str) -> None:
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.wsgi import get_wsgi_application

    from django_idempotency.models import IdempotencyRecord

    app = StaticFilesHandler(get_wsgi_application())

    def logged_in(environ: dict, start_response: object) -> object:
        environ["HTTP_COOKIE"] = f"sessionid={session}"
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, logged_in, ThreadingServer, QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/admin/django_idempotency/idempotencyrecord/"
    api_key = IdempotencyRecord.objects.get(key="create-ci-key")
    try:
        take(base, DOCS / f"admin-list{suffix}.png", 1280, 720)
        take(f"{base}{api_key.pk}/change/", DOCS / f"admin-detail{suffix}.png", 1280, 1260)
    finally:
        server.shutdown()


def take(url: str, path: Path, width: int, height: int) -> None:
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "chromium"
    profile = tempfile.mkdtemp(prefix="idempotency-chromium-")
    try:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={path}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
