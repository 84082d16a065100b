"""Read replicas: a guarded view reads what the primary says.

A response that ``@idempotent`` stores is replayed for as long as the key
lives (24 hours by default). If the view read from a lagging replica (a balance,
a row that was just written), every replay repeats that stale answer. While a
guarded view runs (from its claim until its response is stored), the decorator
marks the context (:func:`guarded`); :class:`GuardedReadsRouter` then sends the
view's reads to the database its writes go to.

Put it first in ``DATABASE_ROUTERS``, before the router that picks replicas::

    DATABASE_ROUTERS = [
        "django_idempotency.stores.database.routers.GuardedReadsRouter",
        "myproject.routers.PrimaryReplicaRouter",
    ]

Outside guarded views it returns ``None``, so the next router decides as before.
The mark is a :mod:`contextvars` variable: it follows a request through threads
and ``sync_to_async``, and never leaks into another request.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from django.db import router

_guarded: ContextVar[bool] = ContextVar("django_idempotency_guarded", default=False)


def in_guarded_view() -> bool:
    """Whether a guarded view is running in this context (its outcome will be stored)."""
    return _guarded.get()


class guarded:  # lower case: used as a function, `with guarded():`
    """Mark the context as running a guarded view, for as long as the block runs.

    A class rather than a @contextmanager generator: every guarded request
    enters it, and a class is the cheaper of the two."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _guarded.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _guarded.reset(self._token)


class GuardedReadsRouter:
    """Reads inside a guarded view go where the model's writes go (the primary).

    Asks the other routers for ``db_for_write`` (this router answers only reads),
    so it needs no alias of its own and works with any primary/replica router.
    """

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        if not _guarded.get():
            return None
        alias: str = router.db_for_write(model, **hints)
        return alias
