"""The demo's OpenAPI schema and its behaviour agree: Schemathesis finds nothing (issue 17).

Schemathesis (its CLI, as a user runs it) fuzzes the demo served by gunicorn,
with every check (``--checks all``): no 5xx, every status, header and body as
documented, schema-valid requests accepted and invalid ones refused, the
stateful links (a created job -> get, update, delete, cancel, rate) followed.
Twice: once with a fresh Idempotency-Key on every request (a hook, as a real
client sends them), once with schemathesis's own generated keys, which repeat
and so also test replays and conflicts.

Runs in both passes of scripts/test, on the database of the pass. The example
count is bounded to fit CI; docs/openapi.rst says how to run it longer
(FUZZ_MAX_EXAMPLES, FUZZ_SEED, or the schemathesis CLI by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

pytest.importorskip("schemathesis")
pytest.importorskip("drf_spectacular")

from tests.servers import Reply, Server, demo_on

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Enough that a job never fails for credits (a 402 is a business rule that no
# schema can express: schemathesis would call it valid data refused).
CREDITS = 10**15


@contextmanager
def demo_database(tmp_path: Path) -> Iterator[str]:
    """A database of the pass's kind for the demo: a SQLite file, or a scratch
    database on the suite's PostgreSQL server, dropped afterwards."""
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        yield f"sqlite:///{tmp_path / 'demo.sqlite3'}"
        return
    import psycopg

    parts = urlsplit(base)
    name = parts.path.lstrip("/") + "_fuzz"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path="/" + name))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    with ExitStack() as stack:
        database = stack.enter_context(demo_database(tmp_path_factory.mktemp("fuzz")))
        app = demo_on(database)
        secret = app.api_key("fuzz", CREDITS)
        server = stack.enter_context(app.server(workers=2, env={"DEMO_ALLOW_DELAY": "0"}))
        yield server, secret


# One worker: with several, hypothesis (describing its strategies) can call
# ast.parse from two threads at once, which CPython 3.11 answers with
# "SystemError: AST constructor recursion depth mismatch": a fuzzer crash,
# not a finding, that would fail the run.
def schemathesis(
    server: Server, secret: str, workdir: Path, *args: str, fresh_keys: bool
) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "FUZZ_FRESH_KEYS": "1" if fresh_keys else "0",
        "FUZZ_API_KEY": secret,
    }
    command = [
        sys.executable, "-m", "schemathesis.cli", "--no-color",
        "--config-file", str(ROOT / "tests" / "schemathesis.toml"),
        "run", f"{server.base}/v1/schema", "--checks", "all", "--workers", "1",
        "--seed", os.environ.get("FUZZ_SEED", "17"), "--request-timeout", "60", *args,
    ]  # fmt: skip
    # Run elsewhere than the checkout: schemathesis keeps a .schemathesis/ cache in its cwd.
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20_000:]
    # A run whose every request was refused for its credentials passes all the
    # checks and proves nothing: schemathesis warns of it, and that fails here.
    assert "Authentication failed" not in output, output[-20_000:]
    assert "passed" in output and "Stateful" in output, output[-20_000:]
    return output


def max_examples(default: int) -> str:
    return os.environ.get("FUZZ_MAX_EXAMPLES", str(default))


def test_schemathesis_with_a_fresh_key_per_request(
    demo: tuple[Server, str], tmp_path: Path
) -> None:
    output = schemathesis(*demo, tmp_path, "--max-examples", max_examples(30), fresh_keys=True)
    assert "Fuzzing" in output and "Coverage" in output


def test_schemathesis_with_its_own_generated_keys(
    demo: tuple[Server, str], tmp_path: Path
) -> None:
    # Its keys repeat ("0", "a"...), so some requests are replays. One check is
    # left out, for the reason docs/openapi.rst gives: a replay answers the
    # job that the first request created, also after that job was deleted,
    # which ensure_resource_availability reports as "created resource not found".
    schemathesis(
        *demo, tmp_path, "--max-examples", max_examples(20),
        "--exclude-checks", "ensure_resource_availability", fresh_keys=False,
    )  # fmt: skip


# JSON errors whatever DEBUG says, over real HTTP (issue 17).


def call(server: Server, secret: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
    request = urllib.request.Request(
        server.base + path, data=body, method=method,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json",
                 **(headers or {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Reply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers.items()), error.read())


def assert_envelope(reply: Reply, status: int, error_type: str) -> None:
    assert reply.status == status, reply.body[:300]
    assert reply.headers["Content-Type"] == "application/json", reply.body[:300]
    error = json.loads(reply.body)["error"]
    assert error["type"] == error_type
    assert reply.headers["Request-Id"] == error["request_id"]


@pytest.mark.parametrize("debug", ["0", "1"])
def test_errors_are_json_whatever_debug_says(tmp_path: Path, debug: str) -> None:
    with ExitStack() as stack:
        app = demo_on(stack.enter_context(demo_database(tmp_path)))
        secret = app.api_key("debug", 100_000)
        server = stack.enter_context(app.server(workers=1, env={"DJANGO_DEBUG": debug}))
        assert_envelope(call(server, secret, "GET", "/v1/no-such-thing"), 404, "not_found")
        job = call(server, secret, "POST", "/v1/jobs", json.dumps({
            "type": "data_collection", "description": "d", "files_needed": 1,
            "accepted_formats": ["image/jpeg"], "price_per_file_cents": 1,
        }).encode(), {"Idempotency-Key": "debug-1"})  # fmt: skip
        assert job.status == 201, job.body
        job_id = json.loads(job.body)["id"]
        big = json.dumps({"description": "x" * 3_000_000}).encode()
        assert_envelope(call(server, secret, "PATCH", f"/v1/jobs/{job_id}", big), 413,
                        "request_too_large")  # fmt: skip
        assert_envelope(
            call(server, secret, "POST", "/v1/jobs/%00/cancel", b"", {"Idempotency-Key": "nul"}),
            400, "request_path_invalid",
        )  # fmt: skip


def test_debug_is_off_unless_asked_for() -> None:
    script = "from testproject import settings; print(settings.DEBUG)"
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_DEBUG", "DEBUG"}}
    env["PYTHONPATH"] = str(ROOT)
    off = subprocess.run([sys.executable, "-c", script], env={**env, "DEBUG": "1"},
                         capture_output=True, text=True, check=True)  # fmt: skip
    on = subprocess.run([sys.executable, "-c", script], env={**env, "DJANGO_DEBUG": "1"},
                        capture_output=True, text=True, check=True)  # fmt: skip
    assert (off.stdout.strip(), on.stdout.strip()) == ("False", "True")
