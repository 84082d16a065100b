"""The Redis store: one Redis key per (scope, key), through django-redis.

For deployments that already run Redis and want no idempotency traffic on
their database. Select it with::

    IDEMPOTENCY_STORE = "django_idempotency.stores.cache.CacheStore"
    IDEMPOTENCY_CACHE = "default"    # a django_redis.cache.RedisCache alias

How a claim works
-----------------
Each (scope, key) is one Redis key, named through the cache's ``make_key`` (so
``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION`` apply) from a hash of scope and
key, so any key string is safe. Its value is one binary-safe blob: a line of
JSON (state, fingerprint, owner token, status, headers) and then the body bytes.

* ``begin`` is one Lua script: ``SET NX PX <lease>`` of an in-flight value that
  holds a random owner token, or, if the key exists, its value. Of any number of
  concurrent requests exactly one claims; the others get a replay, a conflict or
  "in use" from what they read, in the same step.
* While the view runs, a background thread renews the lease (``PEXPIRE``) every
  third of ``IDEMPOTENCY_LEASE``, but only while the key still holds this
  claim's value (or holds nothing: then no one else can have claimed it).
* ``finish`` and ``release`` are Lua compare-and-set scripts: they replace (with
  the response, expiring after the TTL) or delete the key only if it still
  holds this claim's in-flight value (``finish`` also fills an empty key). A
  request that lost its lease can never overwrite the response of the request
  that took the key over.

What it cannot do
-----------------
Redis cannot share a transaction with the view. If a worker dies while its view
runs, the claim stays "in use" until its lease lapses (renewal stops with the
process), and then a retry runs the view again, even if the dead worker's
database writes had already committed. The database store has no such window.
When Redis cannot be reached, ``begin`` raises :class:`StoreError` (a 503, the
view does not run) unless ``IDEMPOTENCY_FAIL_OPEN`` lets the view run unguarded;
``finish`` and ``release`` never raise: the view has already run, so its
response goes out and the failure is logged.

Under ``ATOMIC_REQUESTS`` (on ``IDEMPOTENCY_DATABASE``) the view's writes
commit after the view returns, so ``finish`` stores the response in an
``on_commit`` callback: a transaction that rolls back stores nothing, and its
claim lapses with the lease instead of replaying writes that never happened.

Every script touches exactly one key, so it works on Sentinel and Cluster
set-ups: no multi-key commands, no transactions across keys.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.core.cache import caches
from django.db import connections, transaction
from django.utils import timezone
from redis.exceptions import NoScriptError, RedisError

from ..conf import conf
from ..keys import instant, scoped_key
from .base import (
    Claim,
    InUse,
    Outcome,
    RequestRecord,
    Store,
    StoredResponse,
    StoreError,
    outcome_of,
)

logger = logging.getLogger("django_idempotency")

IN_FLIGHT = "in_flight"
COMPLETED = "completed"
RELEASED = "released"
#: Prepended to the hash of (scope, key) before the cache's ``make_key``.
KEY_NAMESPACE = "idempotency:"


class _Script:
    """A Lua script run by SHA (EVALSHA), loaded on first use on each server."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Any, key: str, *args: Any) -> Any:
        try:
            return client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            return client.eval(self.source, 1, key, *args)


# ARGV: in-flight value, lease ms. Returns nil if claimed, else the value found.
_CLAIM = _Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""
)
# ARGV: our in-flight value, the completed value, its TTL in ms. Returns 1 if
# stored. A key that is gone (our lease lapsed, nobody took it over) is ours to
# fill: no other request can have run meanwhile.
_FINISH = _Script(
    """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# ARGV: our in-flight value, the released value, its TTL in ms. Returns 1 if
# the claim was ours and is released. The released value keeps when the first
# attempt began, for the next attempt's request.idempotency_key.
_RELEASE = _Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# ARGV: the released value found, our in-flight value, lease ms. Returns 1 if claimed.
_TAKE_OVER = _Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# ARGV: our in-flight value, lease ms. Returns 1 if the claim is (again) ours.
# A lapsed key that nobody took over is claimed again, which also restores the
# claim after Redis lost it (a restart without persistence, a failover).
_RENEW = _Script(
    """
local current = redis.call('GET', KEYS[1])
if not current then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
if current ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
)


@dataclass(frozen=True)
class CachedRecord:
    """One record as the Redis store keeps it (see :meth:`CacheStore.lookup`)."""

    scope: str
    key: str
    fingerprint: str
    method: str
    path: str
    state: str
    response: StoredResponse | None


def encode(meta: dict[str, Any], body: bytes = b"") -> bytes:
    # json.dumps escapes newlines inside strings, so the first b"\n" ends the head.
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + body


def decode(value: bytes) -> CachedRecord:
    """Read a value written by :class:`CacheStore`."""
    head, _, body = value.partition(b"\n")
    meta = json.loads(head)
    response = None
    if meta["state"] == COMPLETED:
        response = StoredResponse(
            status=meta["status"], headers=[(n, v) for n, v in meta["headers"]], body=body
        )
    return CachedRecord(
        scope=meta["scope"],
        key=meta["key"],
        fingerprint=meta["fingerprint"],
        method=meta["method"],
        path=meta["path"],
        state=meta["state"],
        response=response,
    )


@dataclass(eq=False)
class _Held:
    """What a CacheStore claim holds. The in-flight value is the ownership token."""

    client: Any
    key: str
    token: bytes
    lease_ms: int
    renew_at: float = 0.0
    done: bool = False
    # Orders a renewal against finish/release: once ``done`` is set under it, no
    # renewal can run after their script (a late one would re-claim a released key).
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Renewer:
    """One daemon thread per process that extends the lease of every live claim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[_Held] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # When the thread next wakes by itself (monotonic); set under _lock.
        self._next_at = 0.0

    def hold(self, held: _Held) -> None:
        held.renew_at = time.monotonic() + held.lease_ms / 3000
        with self._lock:
            self._held.add(held)
            if self._thread is None or not self._thread.is_alive():
                # First claim in this process (threads do not survive a fork).
                self._thread = threading.Thread(
                    target=self._run, name="idempotency-lease-renewer", daemon=True
                )
                self._thread.start()
            # Wake the thread only if it would sleep past this claim's renewal.
            # With one lease for all it rarely does: a wake-up on every claim
            # cost about 0.1 ms of CPU per request (benchmarks/profile_view.py).
            wake = held.renew_at < self._next_at
        if wake:
            self._wake.set()

    def drop(self, held: _Held) -> None:
        with held.lock:
            held.done = True
        with self._lock:
            self._held.discard(held)

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                held = list(self._held)
            now = time.monotonic()
            for one in held:
                if one.renew_at <= now:
                    try:
                        self._renew(one)
                    except Exception:  # keep renewing the others whatever happens
                        logger.exception("Renewing idempotency claim %s failed", one.key)
            with self._lock:
                next_at = min((h.renew_at for h in self._held), default=now + 60)
                self._next_at = next_at
            self._wake.wait(max(0.0, next_at - time.monotonic()))

    def _renew(self, held: _Held) -> None:
        with held.lock:
            if held.done:
                return
            held.renew_at = time.monotonic() + held.lease_ms / 3000
            try:
                kept = _RENEW(held.client, held.key, held.token, held.lease_ms)
            except RedisError as exc:
                logger.warning(
                    "Could not renew the lease of idempotency claim %s: %s", held.key, exc
                )
                return
        if not kept:
            self.drop(held)
            logger.warning(
                "Idempotency claim %s lost its lease while the view ran: another request "
                "took the key over, and this request's response will not be stored.",
                held.key,
            )


_renewer = _Renewer()


class CacheStore(Store):
    """Stores records in Redis through django-redis (``IDEMPOTENCY_CACHE``)."""

    needs_purge = False

    @property
    def alias(self) -> str:
        return conf.IDEMPOTENCY_CACHE

    def redis_key(self, scope: str, key: str) -> str:
        """The Redis key of (scope, key), with the cache's prefix and version."""
        return str(caches[self.alias].make_key(KEY_NAMESPACE + scoped_key(scope, key)))

    def client(self) -> Any:
        """The raw redis-py client of the cache alias (the primary, for writes)."""
        from django_redis import get_redis_connection

        return get_redis_connection(self.alias, write=True)

    def lookup(self, scope: str, key: str) -> CachedRecord | None:
        """The record of (scope, key), for inspection; ``None`` if there is none."""
        value = self.client().get(self.redis_key(scope, key))
        return decode(value) if value is not None else None

    def begin(self, record: RequestRecord) -> Outcome:
        client, key = self.client(), self.redis_key(record.scope, record.key)
        token = self._in_flight(record, record.created_at)
        lease_ms = max(1, round(conf.lease_seconds * 1000))
        first_claimed_at = None
        try:
            existing = _CLAIM(client, key, token, lease_ms)
            found = decode(existing) if existing is not None else None
            if found is not None and found.state == RELEASED:
                # An earlier attempt was released: take its place, keeping when
                # the request's first attempt began if it is the same request.
                meta = json.loads(existing.partition(b"\n")[0])
                if found.fingerprint == record.fingerprint:
                    first_claimed_at = datetime.fromisoformat(meta["first"])
                    if record.created_at.tzinfo is not None:  # instant() wrote UTC
                        first_claimed_at = first_claimed_at.replace(tzinfo=dt_timezone.utc)
                    token = self._in_flight(record, first_claimed_at)
                if not _TAKE_OVER(client, key, existing, token, lease_ms):
                    return InUse()  # another attempt took it over first
                found = None
        except (RedisError, ValueError, KeyError) as exc:
            if conf.IDEMPOTENCY_FAIL_OPEN and isinstance(exc, RedisError):
                logger.warning(
                    "Redis is unavailable (%s); IDEMPOTENCY_FAIL_OPEN is on, so the view "
                    "runs without idempotency protection.",
                    exc,
                )
                return Claim(record, None)
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        if found is None:
            held = _Held(client, key, token, lease_ms)
            _renewer.hold(held)
            return Claim(record, held, first_claimed_at)
        return outcome_of(record, found.fingerprint, found.response)

    @staticmethod
    def _in_flight(record: RequestRecord, first_claimed_at: datetime) -> bytes:
        return encode(
            {
                "state": IN_FLIGHT,
                # The owner: finish, release and renew act only on this exact value.
                "owner": os.urandom(16).hex(),
                "scope": record.scope,
                "key": record.key,
                "fingerprint": record.fingerprint,
                "method": record.method,
                "path": record.path,
                "first": instant(first_claimed_at),
            }
        )

    def finish(self, claim: Claim, response: StoredResponse) -> None:
        held: _Held | None = claim.state
        if held is None:  # fail-open: nothing was claimed
            return
        _renewer.drop(held)
        record = claim.record
        value = encode(
            {
                "state": COMPLETED,
                "scope": record.scope,
                "key": record.key,
                "fingerprint": record.fingerprint,
                "method": record.method,
                "path": record.path,
                "status": response.status,
                "headers": response.headers,
            },
            response.body,
        )
        ttl_ms = max(1, round((record.expires_at - timezone.now()).total_seconds() * 1000))
        alias = conf.IDEMPOTENCY_DATABASE
        connection = connections[alias]
        if connection.settings_dict.get("ATOMIC_REQUESTS") and connection.in_atomic_block:
            # The view's writes commit after we return. Store the response only
            # once they have: if the commit fails, nothing is stored, the claim
            # lapses with its lease, and a retry runs the view again instead of
            # replaying a response whose writes were rolled back.
            transaction.on_commit(
                functools.partial(self._store, held, value, ttl_ms), using=alias
            )
            return
        self._store(held, value, ttl_ms)

    def _store(self, held: _Held, value: bytes, ttl_ms: int) -> None:
        try:
            stored = _FINISH(held.client, held.key, held.token, value, ttl_ms)
        except RedisError as exc:
            # The view has run and its effects stay: send its response anyway.
            # The key still holds the in-flight claim (never a wrong answer);
            # it lapses with the lease, and then a retry runs the view again.
            logger.error(
                "Could not store the response of idempotency claim %s (%s); the key stays "
                "in use until its lease lapses, then a retry runs the view again.",
                held.key,
                exc,
            )
            return
        if not stored:
            logger.warning(
                "Idempotency claim %s had lost its lease; its response was not stored, and the "
                "request that took the key over keeps its own.",
                held.key,
            )

    def release(self, claim: Claim, exc: BaseException | None = None) -> None:
        held: _Held | None = claim.state
        if held is None:
            return
        _renewer.drop(held)
        record = claim.record
        released = encode(
            {
                "state": RELEASED,
                "scope": record.scope,
                "key": record.key,
                "fingerprint": record.fingerprint,
                "method": record.method,
                "path": record.path,
                "first": instant(claim.anchor),
            }
        )
        remaining = (claim.anchor_expires_at - timezone.now()).total_seconds()
        ttl_ms = max(1, round(remaining * 1000))
        try:
            _RELEASE(held.client, held.key, held.token, released, ttl_ms)
        except RedisError as error:
            logger.warning(
                "Could not release idempotency claim %s (%s); the key stays in use until "
                "its lease lapses.",
                held.key,
                error,
            )
