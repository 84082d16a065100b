"""A response is stored only once the view's writes have committed (Redis
cannot join their transaction), and the claim is released when they did not.

Django drops ``on_commit`` callbacks when a transaction rolls back or its
commit fails, and has no ``on_rollback``: a callback that neither ran nor is
still queued when the request finishes means the writes are gone.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from django.core.signals import request_finished
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .lease import Held, renewer, start_completion

logger = logging.getLogger("django_idempotency.stores.redis")

_pending = threading.local()


def open_atomic_blocks() -> list[BaseDatabaseWrapper]:
    """The connections of this thread inside an atomic block that may commit:
    not only a ``TestCase``'s, which never does."""
    return [
        connection
        for connection in connections.all(initialized_only=True)
        if connection.in_atomic_block
        and not all(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)
    ]


class AwaitingCommit:
    """A completion that waits for the commit of the view's transactions on
    ``open_on``; ``release`` frees the key if one of them does not commit."""

    def __init__(
        self,
        held: Held,
        completion: tuple[bytes, int, float],
        open_on: list[BaseDatabaseWrapper],
        release: Callable[[], None],
    ) -> None:
        self.held = held
        self.completion = completion
        self.release = release
        self.callbacks: dict[str, Any] = {}
        for connection in open_on:
            callback = functools.partial(self.committed, connection.alias)
            self.callbacks[connection.alias] = callback
            transaction.on_commit(callback, using=connection.alias, robust=True)
        self.waiting = set(self.callbacks)
        if not hasattr(_pending, "list"):
            _pending.list = []
        _pending.list.append(self)

    def committed(self, alias: str) -> None:
        self.waiting.discard(alias)
        if not self.waiting:
            start_completion(self.held, *self.completion)

    def request_finished(self) -> None:
        if not self.waiting or self.held.done:
            return
        queued = {
            alias
            for alias in self.waiting
            if any(entry[1] is self.callbacks[alias] for entry in connections[alias].run_on_commit)
        }
        if queued:
            # Still open past the request (a transaction around the test
            # client): the callback stores it if it commits, and the claim
            # lapses with its lease if it does not.
            renewer.forget(self.held)
            return
        logger.warning(
            "The transaction of idempotency claim %s did not commit; the claim is released "
            "so that a retry runs the view again.",
            self.held.key,
        )
        self.release()


def _on_request_finished(**kwargs: Any) -> None:
    pending: list[AwaitingCommit] = getattr(_pending, "list", [])
    _pending.list = []
    for one in pending:
        try:
            one.request_finished()
        except Exception:
            logger.exception("Ending idempotency claim %s failed", one.held.key)


request_finished.connect(_on_request_finished, dispatch_uid="django_idempotency.stores.redis")
