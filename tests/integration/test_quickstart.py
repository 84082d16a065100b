"""The quick start works as written, on a new project with stock DRF.

The steps are read from the pages themselves (docs/quickstart.rst, and the
short version in README.rst): each block after a ``.. quickstart: ACTION``
comment is one step, applied as the reader would apply it.

* ``run``: a console block. Each ``$`` command runs through bash in the
  project (``cd`` moves there). ``pip install`` is skipped (this environment
  has the package); ``createsuperuser`` gets its password typed on a
  pseudo-terminal; ``runserver`` is started on a free port in place of 8000.
  The lines under a ``curl -i`` command are its expected answer: the status
  line, each header shown (``...`` stands for the others), and the JSON body,
  compared after ids (UUIDs, request ids) are blanked out. The other
  commands must print no system check message.
* ``append FILE`` / ``create FILE``: the Python block is added to the end of
  FILE, or is FILE.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connection

from tests.servers import free_port
from tests.unit.test_readme import README, ROOT, parse_readme

nodes = pytest.importorskip("docutils.nodes")

PAGES = [ROOT / "docs" / "quickstart.rst", README]
MARK = "quickstart:"
CREDENTIALS = re.compile(r"-u (\w+):(\S+)")
VOLATILE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|req_[0-9A-HJKMNP-TV-Z]{26}"
)


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Step:
    action: str
    target: str
    text: str


def steps(page: Path) -> list[Step]:
    doctree, _ = parse_readme(page)
    found: list[Step] = []
    pending: list[str] | None = None
    for node in doctree.findall(lambda n: isinstance(n, (nodes.comment, nodes.literal_block))):
        if isinstance(node, nodes.comment):
            text = node.astext().strip()
            if text.startswith(MARK):
                pending = text.removeprefix(MARK).split()
        elif pending is not None:
            found.append(Step(pending[0], " ".join(pending[1:]), node.astext()))
            pending = None
    return found


def commands(console: str) -> list[Command]:
    """The ``$`` commands of a console block (with their continuation lines
    joined) and the output lines shown under each."""
    parsed: list[Command] = []
    continued = False
    for raw in console.splitlines():
        if continued:
            parsed[-1].line += " " + raw.strip().removesuffix("\\").strip()
            continued = raw.rstrip().endswith("\\")
        elif raw.startswith("$ "):
            line = raw[2:].split("  #")[0].rstrip()
            continued = line.endswith("\\")
            parsed.append(Command(line.removesuffix("\\").strip()))
        else:
            parsed[-1].expected.append(raw)
    return parsed


def blank_ids(text: str) -> str:
    return VOLATILE.sub("<id>", text)


def check_answer(command: str, answer: str, expected: list[str]) -> None:
    head, _, body = answer.replace("\r\n", "\n").partition("\n\n")
    status, *headers = head.splitlines()
    shown_head, _, shown_body = "\n".join(expected).partition("\n\n")
    shown_status, *shown_headers = shown_head.splitlines()
    context = f"{command}\n--- answer ---\n{answer}"
    assert status.strip() == shown_status.strip(), context
    actual = {
        (name.strip().lower(), blank_ids(value.strip()))
        for name, _, value in (header.partition(":") for header in headers)
    }
    for shown in shown_headers:
        if shown.strip() == "...":
            continue
        name, _, value = shown.partition(":")
        assert (name.strip().lower(), blank_ids(value.strip())) in actual, context
    assert json.loads(blank_ids(body)) == json.loads(blank_ids(shown_body)), context


class Project:
    """The reader's shell: a working directory, and what it started."""

    def __init__(self, home: Path, page_text: str) -> None:
        self.cwd = home
        self.port = free_port()
        self.env = {
            name: value
            for name, value in os.environ.items()
            if name not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH"}
        }
        # "python" and "django-admin" are this interpreter's, as in an activated venv.
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        found = CREDENTIALS.search(page_text)
        assert found, "the page's curl lines send no user and password"
        self.password = found.group(2)
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = home / "runserver.log"
        self.answers: list[str] = []

    def run(self, command: Command) -> None:
        line = command.line
        words = shlex.split(line)
        if words[:2] == ["pip", "install"]:
            return
        if words[0] == "cd":
            self.cwd = self.cwd / words[1]
            return
        if words[:3] == ["python", "manage.py", "createsuperuser"]:
            self.createsuperuser(line)
            return
        if words == ["python", "manage.py", "runserver"]:
            self.runserver(f"{line} 127.0.0.1:{self.port} --noreload")
            return
        line = line.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        out = subprocess.run(
            ["bash", "-c", line],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}\n{self.log()}"
        if words[0] == "curl":
            self.answers.append(out.stdout)
            check_answer(line, out.stdout, command.expected)
        else:
            assert not command.expected, f"{line}: output is shown only under curl -i"
            # A reader who follows the page meets no warning (W032 during the
            # migrate that creates the table was one).
            assert "System check identified" not in out.stdout + out.stderr, out.stderr

    def createsuperuser(self, line: str) -> None:
        # createsuperuser reads the password from a terminal only. In a session
        # of its own the child has no controlling terminal, so getpass reads
        # the pseudo-terminal on its stdin.
        primary, secondary = pty.openpty()
        process = subprocess.Popen(
            ["bash", "-c", line],
            cwd=self.cwd,
            env=self.env,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            start_new_session=True,
        )
        os.close(secondary)
        output, typed = b"", 0
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([primary], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(primary, 4096)
                    except OSError:  # the child closed the terminal: it is done
                        break
                    if not chunk:
                        break
                    output += chunk
                    while output.count(b"Password") > typed:
                        os.write(primary, self.password.encode() + b"\n")
                        typed += 1
                elif process.poll() is not None:
                    break
        finally:
            os.close(primary)
        assert process.wait(10) == 0, output.decode(errors="replace")
        assert typed == 2, output.decode(errors="replace")

    def runserver(self, line: str) -> None:
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(
                ["bash", "-c", f"exec {line}"],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert self.server.poll() is None, self.log()
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.1)

    def log(self) -> str:
        if not self.server_log.exists():
            return ""
        return "--- runserver ---\n" + self.server_log.read_text(errors="replace")

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_quick_start_has_every_step(page: Path) -> None:
    # Guards the extraction: a renamed mark would leave nothing to run.
    actions = [step.action for step in steps(page)]
    assert actions.count("run") >= 2
    assert {"append", "create"} <= set(actions)
    console = "\n".join(step.text for step in steps(page) if step.action == "run")
    assert "startproject" in console and "runserver" in console and "curl" in console


@pytest.mark.slow
@pytest.mark.skipif(
    connection.vendor != "sqlite",
    reason="the new project is on SQLite, as startproject makes it: run in the suite's SQLite pass",
)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_quick_start_works_as_written(page: Path, tmp_path: Path) -> None:
    project = Project(tmp_path, page.read_text(encoding="utf-8"))
    try:
        for step in steps(page):
            apply(project, step)
    finally:
        project.stop()
    # The page says the retry is the stored response, byte for byte.
    assert len(project.answers) >= 3
    first, replay = (
        answer.replace("\r\n", "\n").partition("\n\n")[2] for answer in project.answers[:2]
    )
    assert replay == first


def apply(project: Project, step: Step) -> None:
    if step.action == "run":
        for command in commands(step.text):
            project.run(command)
        return
    target = project.cwd / step.target
    if step.action == "create":
        assert not target.exists(), target
        target.write_text(step.text + "\n", encoding="utf-8")
    else:
        assert step.action == "append", step.action
        with open(target, "a", encoding="utf-8") as file:
            file.write("\n" + step.text + "\n")
