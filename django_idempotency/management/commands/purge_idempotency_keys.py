"""``manage.py purge_idempotency_keys``: delete expired idempotency records.

What goes
---------
A record goes once its own ``expires_at`` has passed: the store already
ignores it from then on. ``expires_at`` is the authority, not ``created_at`` plus
``IDEMPOTENCY_TTL``, because ``@idempotent(ttl=...)`` gives views their own TTL.
``--older-than`` only *adds* a condition (created before now minus the
duration), so it can keep expired records longer but never deletes a record that
is still valid or in flight: a client may still retry with a valid key, and
deleting its record would let the operation run twice. To keep records for a
shorter time, lower ``IDEMPOTENCY_TTL``.

How
---
The store does the work (``Store.purge_expired``), as Django's
``clearsessions`` leaves it to the session backend: the database store
deletes in short batches that several hosts can run at once (see
:mod:`django_idempotency.stores.database`); a store whose backend expires
keys by itself has nothing to purge; a third-party store brings its own.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from ...conf import conf
from ...stores import get_store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_duration(value: str) -> timedelta:
    """``"90"`` (seconds), ``"30m"``, ``"48h"``, ``"7d"`` or ``"2w"`` as a timedelta."""
    match = _DURATION.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a duration: use seconds or a number with s, m, h, d or w "
            "(e.g. 3600, 30m, 48h, 7d)"
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[unit.lower() or "s"])


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise CommandError(f"--batch-size must be a positive whole number, not {value!r}")
    return number


class Command(BaseCommand):
    help = (
        "Delete idempotency records whose expiry has passed, in short batches. "
        "Safe to run from cron on several hosts at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only say how many records would be deleted.",
        )
        parser.add_argument(
            "--older-than",
            metavar="DURATION",
            help="Also require the record to be created more than DURATION ago "
            "(seconds, or 30m, 48h, 7d, 2w), to keep expired records longer. "
            "Records that have not expired are never deleted.",
        )
        parser.add_argument(
            "--batch-size",
            default="5000",
            metavar="N",
            help="Rows deleted per statement and transaction (default 5000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity: int = options["verbosity"]
        batch_size = _positive_int(str(options["batch_size"]))
        older_than: timedelta | None = None
        if options["older_than"] is not None:
            try:
                older_than = parse_duration(options["older_than"])
            except ValueError as exc:
                raise CommandError(f"--older-than: {exc}") from exc

        store = get_store()
        if not store.needs_purge:
            if verbosity >= 1:
                self.stdout.write(
                    f"{type(store).__name__} expires idempotency keys by itself; "
                    "there is nothing to purge."
                )
            return

        now = timezone.now()
        created_before = now - older_than if older_than is not None else None
        if older_than is not None and older_than < conf.IDEMPOTENCY_TTL and verbosity >= 1:
            self.stderr.write(
                self.style.WARNING(
                    f"--older-than {options['older_than']} is shorter than IDEMPOTENCY_TTL; "
                    "records are still deleted only once they have expired."
                )
            )

        if options["dry_run"]:
            count = store.purge_expired(
                now=now, created_before=created_before, batch_size=batch_size, dry_run=True
            )
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

        total = store.purge_expired(
            now=now, created_before=created_before, batch_size=batch_size, on_batch=on_batch
        )
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"Deleted {total} expired idempotency record(s)."))
