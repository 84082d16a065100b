"""The Store interface and the records it passes (docs/stores.rst, "Writing a store")."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.checks import CheckMessage


class StoreError(Exception):
    """The store failed, an outage that passes: the view must not run, and the
    client gets ``503 idempotency_store_unavailable``, to retry."""

    #: Whether the same request can succeed later with nobody changing the server.
    retryable: bool = True


class StoreMisconfigured(StoreError):
    """The store cannot work as configured: the client gets ``500
    idempotency_misconfigured``, not to retry; the message, logged at ERROR,
    says what to fix."""

    retryable = False


@dataclass(frozen=True)
class RequestRecord:
    """What the store needs to know of one incoming request."""

    scope: str
    key: str
    fingerprint: str
    method: str
    path: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class StoredResponse:
    """A response as it is kept and replayed: status, headers and body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Claim:
    """This request owns the key; the store keeps what it needs in ``state``.

    ``first_claimed_at``: when the first, released, attempt claimed the key
    (``request.idempotency_key`` derives from it). ``may_have_acted`` is False
    for a released 4xx: a store need not remember such an attempt.
    """

    record: RequestRecord
    state: Any = field(default=None, repr=False)
    first_claimed_at: datetime | None = None
    may_have_acted: bool = True

    @property
    def anchor(self) -> datetime:
        """When this logical request began: its first attempt's claim."""
        return self.first_claimed_at or self.record.created_at

    @property
    def anchor_expires_at(self) -> datetime:
        """When this logical request's TTL ends: a store forgets a released attempt then."""
        return self.anchor + (self.record.expires_at - self.record.created_at)


@dataclass(frozen=True)
class Replay:
    """The same request already finished: answer with its stored response."""

    response: StoredResponse


@dataclass(frozen=True)
class Conflict:
    """The key was used for a different request (body, method or path)."""


@dataclass(frozen=True)
class InUse:
    """A request with this key is still running."""


#: What ``Store.begin`` decides for a request.
Decision = Claim | Replay | Conflict | InUse


class Store(abc.ABC):
    """Keeps one record per (scope, key) until it expires."""

    #: Whether records must be deleted by ``purge_idempotency_keys``; a store
    #: whose backend expires them by itself says False.
    needs_purge: bool = True

    #: Whether releasing a claim undoes the view's database writes (they share
    #: one transaction). Where not, a view stopped halfway is ``abandon()``\ed.
    rolls_back_view_writes: bool = False

    @classmethod
    def check(cls) -> list[CheckMessage]:
        """System check messages about this store's settings and backend, for the
        class that ``IDEMPOTENCY_STORE`` names."""
        return []

    @classmethod
    def check_deployment(cls) -> list[CheckMessage]:
        """Checks that ask the store's backend itself, for ``manage.py check --deploy``."""
        return []

    def claims_held(self) -> tuple[int, datetime | None] | None:
        """(How many claims are held right now, when the oldest began), for the
        admin, where the store can tell without a record; None: it cannot."""
        return None

    def purge_expired(
        self,
        *,
        now: datetime | None = None,
        created_before: datetime | None = None,
        batch_size: int = 5000,
        dry_run: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete the records expired by ``now`` (and, if given, created before
        ``created_before``), ``batch_size`` at a time, telling ``on_batch`` each
        count; the number deleted, or that would be with ``dry_run``. A store
        with ``needs_purge = True`` must implement it."""
        if not self.needs_purge:
            return 0
        raise NotImplementedError(
            f"{type(self).__name__} keeps expired records: it must implement purge_expired()."
        )

    @abc.abstractmethod
    def begin(self, record: RequestRecord) -> Decision:
        """Claim the key for ``record``, atomically, or say why the view must not run."""

    @abc.abstractmethod
    def finish(self, claim: Claim, response: StoredResponse) -> None:
        """Keep ``response`` as the outcome of the claimed request.

        Raise :class:`StoreError` only if the view's effects were undone too
        (the client is told nothing was processed); else log and return.
        """

    @abc.abstractmethod
    def release(self, claim: Claim, exc: BaseException | None = None) -> None:
        """Forget the claim, so that a retry with the key runs the view again.

        ``exc`` is the exception that the view raised, if it raised one.
        """

    def abandon(self, claim: Claim) -> None:  # noqa: B027 (doing nothing is a fair default)
        """Leave a claim whose view was stopped halfway, its writes standing, to
        lapse by itself ("in use" until then). Called in the event loop, only
        when :attr:`rolls_back_view_writes` is False: it must not block."""


def outcome_of(
    record: RequestRecord, fingerprint: str, response: StoredResponse | None
) -> Decision:
    """What an unexpired record (its request's ``fingerprint``, its ``response``,
    None while running) means for ``record``: every store answers duplicates so."""
    if fingerprint != record.fingerprint:
        return Conflict()
    if response is None:
        return InUse()
    return Replay(response)
