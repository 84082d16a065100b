"""The Store interface and the records it passes.

A request goes through a store in three steps::

    outcome = store.begin(record)      # Claim, Replay, Conflict or InUse
    ...run the view only on a Claim...
    store.finish(claim, response)      # keep the definitive outcome
    store.release(claim)               # or forget the claim: a retry runs again

``begin`` must be atomic in the store: of any number of concurrent requests
with one (scope, key), exactly one gets a :class:`Claim`. Each claim ends in
exactly one ``finish`` or ``release``, or, when its view was stopped halfway
and the store cannot undo its writes, ``abandon`` (it lapses by itself).

A store also owns what is particular to it, as Django's session backends own
``clear_expired``: :meth:`Store.check` gives its system checks (the app's
checks call it for the configured class), and :meth:`Store.purge_expired`
deletes expired records (``manage.py purge_idempotency_keys`` calls it). A
third-party store brings its own; nothing else has to learn about it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.checks import CheckMessage


class StoreError(Exception):
    """The store could not be reached or failed; the view must not run.

    An outage, which passes: the client gets ``503
    idempotency_store_unavailable`` with ``X-Should-Retry: true`` and
    ``Retry-After``.
    """

    #: Whether the same request can succeed later with nobody changing the server.
    retryable: bool = True


class StoreMisconfigured(StoreError):
    """The store cannot work as configured (its table is missing, its client
    cannot follow a Redis Cluster...): no retry can succeed until someone fixes
    the server, so the client gets ``500 idempotency_misconfigured`` with
    ``X-Should-Retry: false``. The message says what to fix; it is logged at
    ERROR, never sent to the client."""

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

    ``first_claimed_at`` is when the first attempt of this request claimed the
    key, if an earlier attempt was released (a store that remembers released
    attempts sets it); ``request.idempotency_key`` is derived from it.
    ``may_have_acted`` is False when the view refused the request (a released
    4xx): a store need not remember such an attempt.
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
        """When this logical request's TTL ends, counted from its first attempt:
        a store forgets a released attempt then."""
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


Outcome = Claim | Replay | Conflict | InUse


class Store(abc.ABC):
    """Keeps one record per (scope, key) until it expires."""

    #: Whether records must be deleted by ``purge_idempotency_keys``; a store
    #: whose backend expires them by itself says False.
    needs_purge: bool = True

    #: Whether releasing a claim undoes the view's database writes (the
    #: database store's claim and the view share one transaction). Where it
    #: does not, a claim whose view was stopped halfway is never released:
    #: ``abandon()`` leaves it to lapse.
    rolls_back_view_writes: bool = False

    @classmethod
    def check(cls) -> list[CheckMessage]:
        """System check messages about this store's own settings and backend.

        Called for the class that ``IDEMPOTENCY_STORE`` names, by ``manage.py
        check`` and on the first request; the default has nothing to say.
        """
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
        """Delete the records that expired by ``now`` (default: now); the number deleted.

        ``created_before`` also requires a record to be created before then (to
        keep expired records longer); a record that has not expired never goes.
        Rows go ``batch_size`` at a time, and ``on_batch`` is told each batch's
        count. ``dry_run`` deletes nothing and returns how many would go.

        A store whose backend expires records by itself (``needs_purge =
        False``) has nothing to do; any other store must implement this.
        """
        if not self.needs_purge:
            return 0
        raise NotImplementedError(
            f"{type(self).__name__} keeps expired records: it must implement purge_expired()."
        )

    @abc.abstractmethod
    def begin(self, record: RequestRecord) -> Outcome:
        """Claim the key for ``record``, or say why the view must not run."""

    @abc.abstractmethod
    def finish(self, claim: Claim, response: StoredResponse) -> None:
        """Keep ``response`` as the outcome of the claimed request.

        Raise :class:`StoreError` only if the view's effects were undone too (the
        client is then told that nothing was processed); a store that cannot undo
        them must log the failure and return, so the view's response goes out.
        """

    @abc.abstractmethod
    def release(self, claim: Claim, exc: BaseException | None = None) -> None:
        """Forget the claim, so that a retry with the key runs the view again.

        ``exc`` is the exception that the view raised, if it raised one.
        """

    def abandon(self, claim: Claim) -> None:  # noqa: B027 (doing nothing is a fair default)
        """Stop keeping a claim whose view was stopped before its end (an
        ``async def`` view cancelled as the server shuts down) and whose
        effects may stand, so a retry must not run it again at once: the claim
        stays "in use" until it lapses by itself. Called only when
        :attr:`rolls_back_view_writes` is False (else the claim is released,
        and the view's writes with it), in the event loop: it must not block.

        The default does nothing: the claim lasts as the store lets an
        unfinished claim last. A store that renews a lease stops renewing it.
        """


def outcome_of(record: RequestRecord, fingerprint: str, response: StoredResponse | None) -> Outcome:
    """What an existing, unexpired record means for the request ``record``.

    ``fingerprint`` is the stored request's; ``response`` is None while that
    request is still running. Every store answers duplicates through this.
    """
    if fingerprint != record.fingerprint:
        return Conflict()
    if response is None:
        return InUse()
    return Replay(response)
