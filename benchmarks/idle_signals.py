#!/usr/bin/env python
"""What an outcome costs a request when nobody listens to the signals.

The decorator calls one helper per outcome (signal plus log line); a first
request makes two calls (claimed, stored). This times the helper with no
receivers and the default log level, next to the other ways of asking
whether a signal has receivers.

    python benchmarks/idle_signals.py
"""

from __future__ import annotations

import os
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.test import RequestFactory  # noqa: E402
from django.utils import timezone  # noqa: E402

from django_idempotency import signals  # noqa: E402
from django_idempotency.stores import RequestRecord  # noqa: E402
from django_idempotency.stores.database import DatabaseStore  # noqa: E402

NUMBER = 200_000


def per_call_ns(statement: str, **names: object) -> float:
    timer = timeit.Timer(statement, globals={**globals(), **names})
    return min(timer.repeat(repeat=5, number=NUMBER)) / NUMBER * 1e9


def main() -> None:
    now = timezone.now()
    record = RequestRecord("user:1", "k", "f" * 64, "POST", "/p", now, now)
    request = RequestFactory().post("/p")
    store = DatabaseStore()
    outcome = signals.claimed
    rows = {
        "empty function call (baseline)": per_call_ns("noop()", noop=lambda: None),
        "notify(claimed, ...), no receivers": per_call_ns(
            "notify(outcome, store, request, record)",
            notify=signals.notify,
            outcome=outcome,
            store=store,
            request=request,
            record=record,
        ),
        "notify(stored, ..., status=201), no receivers": per_call_ns(
            "notify(signals.stored, store, request, record, status=201)",
            notify=signals.notify,
            store=store,
            request=request,
            record=record,
        ),
        "signal.has_listeners()": per_call_ns("outcome.has_listeners()", outcome=outcome),
        "signal.send(...) with kwargs, no receivers": per_call_ns(
            "outcome.send(DatabaseStore, request=request, scope='s', key='k', method='POST',"
            " path='/p')",
            outcome=outcome,
            request=request,
        ),
    }
    print(f"Python {sys.version.split()[0]}, Django {django.get_version()}, best of 5 x {NUMBER}")
    for name, ns in rows.items():
        print(f"{ns:8.0f} ns  {name}")


if __name__ == "__main__":
    main()
