"""The helpers that tests use to run servers and commands (tests/servers/)."""

from __future__ import annotations

import pytest

from tests.servers.demo import Demo


def test_a_failed_manage_command_shows_its_stderr(tmp_path) -> None:
    # A setup step that fails in a subprocess must say why in the test's
    # failure, not only "returned non-zero exit status 1".
    demo = Demo(f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    with pytest.raises(RuntimeError) as failure:
        demo.manage("no_such_command")
    assert "exited with 1" in str(failure.value)
    assert "Unknown command: 'no_such_command'" in str(failure.value)
