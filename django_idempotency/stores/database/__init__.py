"""The database store (the default ``IDEMPOTENCY_STORE``) and its read-replica routers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import DatabaseStore

__all__ = ["DatabaseStore"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the store needs the app registry (its model),
    # and the decorator imports .routers while the app itself is imported.
    if name == "DatabaseStore":
        from .store import DatabaseStore

        return DatabaseStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
