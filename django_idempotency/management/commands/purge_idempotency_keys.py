"""``manage.py purge_idempotency_keys``: delete expired idempotency records.

The store does the work (``Store.purge_expired``), as ``clearsessions`` leaves it
to the session backend. What goes, and why ``--older-than`` can only keep records
longer, is in docs/operating.rst.
"""

from __future__ import annotations

import re
from argparse import ArgumentTypeError
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from ...conf import conf
from ...stores import get_store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_duration(value: str) -> timedelta:
    """``"90"`` (seconds), ``"30m"``, ``"48h"``, ``"7d"`` or ``"2w"`` as a timedelta."""
    if not (match := _DURATION.match(value)):
        raise ArgumentTypeError(
            f"{value!r} is not a duration: use seconds or a number with s, m, h, d or w "
            "(e.g. 3600, 30m, 48h, 7d)"
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[unit.lower() or "s"])


def _positive_int(value: str) -> int:
    number = int(value) if re.fullmatch(r"[0-9]+", value) else 0
    if number < 1:
        raise ArgumentTypeError(f"must be a positive whole number, not {value!r}")
    return number


class Command(BaseCommand):
    help = (
        "Delete idempotency records whose expiry has passed, in short batches. "
        "Safe to run from cron on several hosts at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Only say how many records would be deleted."
        )
        parser.add_argument(
            "--older-than",
            type=parse_duration,
            metavar="DURATION",
            help="Also require the record to be created more than DURATION ago "
            "(seconds, or 30m, 48h, 7d, 2w), to keep expired records longer. "
            "Records that have not expired are never deleted.",
        )
        parser.add_argument(
            "--batch-size",
            type=_positive_int,
            default=5000,
            metavar="N",
            help="Rows deleted per statement and transaction (default 5000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity: int = options["verbosity"]
        older_than: timedelta | None = options["older_than"]
        store = get_store()
        if not store.needs_purge:
            if verbosity >= 1:
                self.stdout.write(
                    f"{type(store).__name__} expires idempotency keys by itself; "
                    "there is nothing to purge."
                )
            return
        now = timezone.now()
        if older_than is not None and older_than < conf.IDEMPOTENCY_TTL and verbosity >= 1:
            self.stderr.write(
                self.style.WARNING(
                    f"--older-than {older_than} is shorter than IDEMPOTENCY_TTL; "
                    "records are still deleted only once they have expired."
                )
            )
        purge = {
            "now": now,
            "created_before": now - older_than if older_than is not None else None,
            "batch_size": options["batch_size"],
        }
        if options["dry_run"]:
            count = store.purge_expired(**purge, dry_run=True)
            if verbosity >= 1:
                self.stdout.write(f"Would delete {count} expired idempotency record(s).")
            return
        batches: list[int] = []

        def on_batch(deleted: int) -> None:
            batches.append(deleted)
            if verbosity >= 2:
                self.stdout.write(
                    f"Batch {len(batches)}: deleted {deleted} ({sum(batches)} so far)."
                )

        total = store.purge_expired(**purge, on_batch=on_batch)
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"Deleted {total} expired idempotency record(s)."))
