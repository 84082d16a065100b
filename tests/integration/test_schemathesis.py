"""The demo's OpenAPI schema and its behaviour agree: Schemathesis finds nothing.

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

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

if (
    sys.version_info >= (3, 11)
    and os.environ.get("REQUIRE_SERVICES", os.environ.get("CI", "")) not in {"", "0", "false"}
    and importlib.util.find_spec("schemathesis") is None
):
    # The testing extra installs it on 3.11+: in CI its absence is a failure.
    pytest.fail("schemathesis is not installed (the [testing] extra)", pytrace=False)
pytest.importorskip("schemathesis", reason="schemathesis needs Python 3.11+")
pytest.importorskip("drf_spectacular")

from tests.servers.demo import demo_database, demo_on
from tests.servers.http import Server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Enough that a job never fails for credits (a 402 is a business rule that no
# schema can express: schemathesis would call it valid data refused).
CREDITS = 10**15


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    with ExitStack() as stack:
        database = stack.enter_context(demo_database(tmp_path_factory.mktemp("fuzz"), "fuzz"))
        app = demo_on(database)
        secret = app.api_key("fuzz", CREDITS)
        server = stack.enter_context(app.server(workers=2, env={"DEMO_ALLOW_DELAY": "0"}))
        yield server, secret


# One worker: with several, hypothesis (describing its strategies) can call
# ast.parse from two threads at once, which CPython 3.11 answers with
# "SystemError: AST constructor recursion depth mismatch": a fuzzer crash,
# not a finding, that would fail the run.
def schemathesis(server: Server, secret: str, workdir: Path, *args: str, fresh_keys: bool) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
        "FUZZ_FRESH_KEYS": "1" if fresh_keys else "0",
        "FUZZ_API_KEY": secret,
    }
    command = [
        sys.executable, "-m", "schemathesis.cli", "--no-color",
        "--config-file", str(ROOT / "tests" / "integration" / "schemathesis.toml"),
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


def test_schemathesis_with_its_own_generated_keys(demo: tuple[Server, str], tmp_path: Path) -> None:
    # Its keys repeat ("0", "a"...), so some requests are replays. One check is
    # left out, for the reason docs/openapi.rst gives: a replay answers the
    # job that the first request created, also after that job was deleted,
    # which ensure_resource_availability reports as "created resource not found".
    schemathesis(
        *demo, tmp_path, "--max-examples", max_examples(20),
        "--exclude-checks", "ensure_resource_availability", fresh_keys=False,
    )  # fmt: skip
