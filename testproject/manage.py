#!/usr/bin/env python
"""Django's command-line utility for the demo project."""

import os
import sys
from pathlib import Path


def main() -> None:
    # Run as a script, Python puts testproject/ itself first on sys.path; put the
    # repo root there instead, so that `testproject` and `django_idempotency`
    # import as packages and `api` can't be imported a second time under a
    # second name.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
