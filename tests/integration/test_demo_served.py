"""The demo under gunicorn answers every error in the JSON envelope, with
DEBUG on and off: an unknown path, a body over the limit, a path the database
cannot hold."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.helpers import envelope
from tests.servers.demo import demo_database, demo_on


@pytest.mark.parametrize("debug", ["0", "1"])
def test_errors_are_json_whatever_debug_says(tmp_path: Path, debug: str) -> None:
    with ExitStack() as stack:
        app = demo_on(stack.enter_context(demo_database(tmp_path, f"debug{debug}")))
        bearer = {"Authorization": f"Bearer {app.api_key('debug', 100_000)}"}
        server = stack.enter_context(app.server(workers=1, env={"DJANGO_DEBUG": debug}))
        envelope(
            server.request("/v1/no-such-thing", method="GET", headers=bearer), 404, "not_found"
        )
        job = server.request("/v1/jobs", json.dumps({
            "type": "data_collection", "description": "d", "files_needed": 1,
            "accepted_formats": ["image/jpeg"], "price_per_file_cents": 1,
        }).encode(), headers={**bearer, "Idempotency-Key": "debug-1"})  # fmt: skip
        assert job.status == 201, job.body
        job_id = json.loads(job.body)["id"]
        big = json.dumps({"description": "x" * 3_000_000}).encode()
        patch = server.request(f"/v1/jobs/{job_id}", big, method="PATCH", headers=bearer)
        envelope(patch, 413, "request_too_large")
        cancel = server.request(
            "/v1/jobs/%00/cancel", b"", headers={**bearer, "Idempotency-Key": "nul"}
        )
        envelope(cancel, 400, "request_path_invalid")
