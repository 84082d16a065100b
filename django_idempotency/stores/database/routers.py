"""Read replicas: while a guarded view runs, its reads go where its writes go,
so a stored response never repeats a lagging replica's answer (docs/scaling.rst,
"The replica router"). The mark is a contextvar: it follows the request through
threads and ``sync_to_async`` and never leaks into another request."""

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
    A class: every guarded request enters it, and a generator costs more."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _guarded.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _guarded.reset(self._token)


class GuardedReadsRouter:
    """Reads inside a guarded view go where the model's writes go (the primary),
    as the other routers' ``db_for_write`` says; outside them, no opinion."""

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        if not _guarded.get():
            return None
        alias: str = router.db_for_write(model, **hints)
        return alias
