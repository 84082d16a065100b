"""A signal per outcome of a guarded request, and the log line of each.

Every signal is sent with ``sender`` (the store's class) and ``request``,
``scope``, ``key``, ``method``, ``path``, plus ``status`` or ``exception`` as
each says; docs/monitoring.rst has the details and examples.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

from . import errors
from .stores.base import RequestRecord, Store

# The request path's logger, as docs/monitoring.rst names it.
logger = logging.getLogger("django_idempotency.decorators")


class Outcome(Signal):
    """A Django signal with a name, which log lines use."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __repr__(self) -> str:
        return f"<Outcome {self.name}>"


#: The request claimed its key: the view runs now.
claimed = Outcome("claimed")
#: The same request had finished before: its stored response (``status``) is sent.
replayed = Outcome("replayed")
#: The key was used for a different request: 409 ``idempotency_conflict``.
conflict = Outcome("conflict")
#: A request with the key is still running: 409 ``idempotency_key_in_use``.
in_use = Outcome("in_use")
#: The view's response (``status``) was kept: retries replay it.
stored = Outcome("stored")
#: The claim was given up, so a retry runs the view again: the view answered a
#: status that is not kept (``status``), or raised (``exception``; ``status`` None).
released = Outcome("released")
#: The store failed (``exception``): 503 ``idempotency_store_unavailable``: the view did
#: not run, or its effects were rolled back with the claim.
store_unavailable = Outcome("store_unavailable")

ALL = (claimed, replayed, conflict, in_use, stored, released, store_unavailable)


def notify(
    outcome: Outcome, store: Store, request: Any, record: RequestRecord, **info: Any
) -> None:
    """Send ``outcome`` and log it: a store failure at ERROR, the rest at DEBUG.

    A receiver's exception is logged, never raised: a broken metrics hook must
    not break the guarantee.
    """
    if outcome.receivers:  # as Signal.send starts: next to free with nobody listening
        results = outcome.send_robust(
            type(store),
            request=request,
            scope=record.scope,
            key=record.key,
            method=record.method,
            path=record.path,
            **info,
        )
        for receiver, result in results:
            if isinstance(result, Exception):
                logger.error(
                    "A receiver of django_idempotency.signals.%s failed: %r",
                    outcome.name,
                    receiver,
                    exc_info=result,
                )
    if outcome is store_unavailable:
        exc = info["exception"]
        answer = errors.store_failure(exc)
        logger.error(
            "The idempotency store %s %s (%s); answered %s to %s %s, key %r, scope %r.",
            type(store).__name__,
            "failed" if answer.retryable else "is misconfigured, fix it",
            exc,
            answer.status,
            record.method,
            record.path,
            record.key,
            record.scope,
            exc_info=exc,
        )
    elif logger.isEnabledFor(logging.DEBUG):
        details = "".join(
            f", {name} {value!r}" for name, value in info.items() if value is not None
        )
        logger.debug(
            "Idempotency-Key %s: %s %s, key %r, scope %r%s",
            outcome.name,
            record.method,
            record.path,
            record.key,
            record.scope,
            details,
        )
