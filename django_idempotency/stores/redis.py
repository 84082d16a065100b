"""The Redis store: one Redis key per (scope, key), through django-redis.

For deployments that already run Redis and want no idempotency traffic on
their database. Select it with::

    IDEMPOTENCY_STORE = "django_idempotency.stores.redis.RedisStore"
    IDEMPOTENCY_CACHE = "default"    # a django_redis.cache.RedisCache alias

It is named after what it needs: django-redis's raw redis-py client and Lua
scripts (a plain Django cache cannot do a compare-and-set). The old path,
``django_idempotency.stores.cache.CacheStore``, still works and is deprecated.

How a claim works
-----------------
Each (scope, key) is one Redis key, named through the cache's ``make_key`` (so
``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION`` apply) from a hash of scope and
key, so any key string is safe. Its value is one binary-safe blob: a line of
JSON (state, fingerprint, owner token, status, headers) and then the body bytes.

* ``begin`` is one Lua script: ``SET NX PX <lease>`` of an in-flight value that
  holds a random owner token, or, if the key exists, its value. Of any number of
  concurrent requests exactly one claims; the others get a replay, a conflict or
  "in use" from what they read, in the same step. An in-flight key lives an
  hour past its lease: one whose PTTL says the lease has lapsed is taken over
  in the same script, and the take-over is logged.
* While the view runs, a background thread renews the lease (``PEXPIRE``) every
  third of ``IDEMPOTENCY_LEASE``, but only while the key still holds this
  claim's value (or holds nothing: then no one else can have claimed it).
* ``finish`` and ``release`` are Lua compare-and-set scripts: they replace (with
  the response, expiring after the TTL) or delete the key only if it still
  holds this claim's in-flight value (``finish`` also fills an empty key). A
  request that lost its lease can never overwrite the response of the request
  that took the key over.

Every script touches exactly one key, so it works on Sentinel and Cluster
set-ups (on a cluster, with :class:`~django_idempotency.stores.redis_cluster.
RedisClusterClient`): no multi-key commands, no transactions across keys.

Only after the view's writes commit
-----------------------------------
Redis cannot share a transaction with the view, so ``finish`` stores the
response only once every database connection that is inside an atomic block
(``ATOMIC_REQUESTS``, ``transaction.atomic`` around the decorated view, or
``method_decorator(transaction.atomic, name="dispatch")``) has committed, in
``transaction.on_commit`` callbacks. Django drops those callbacks when the
transaction rolls back (there is no ``on_rollback``), so when the request
finishes (``request_finished``) and a callback neither ran nor is still queued,
the transaction rolled back or its commit failed: the claim is released and a
retry runs the view again. Atomic blocks that a ``TestCase`` opens are not the
view's: they never commit, and the response is stored at once.

A completion that fails
-----------------------
The view has run and its writes have committed, so its response goes out
whatever Redis says. If storing it fails (Redis down, a blip, ``NOREPLICAS``,
a failover), the background thread retries it, owner-checked so repeating it
is safe, with a growing delay, until it is stored or the record's TTL has
passed (or the process dies). Meanwhile the key keeps the in-flight claim, so a
retry of the request gets "in use", not a second run.

A time budget
-------------
``IDEMPOTENCY_REDIS_TIMEOUT_BUDGET`` bounds the time one request waits for
Redis, redis-py's own retries included (its cluster client retries a
connection error ten times with a growing delay): a deadline per thread,
checked before each attempt and by :class:`BudgetBackoff` between redis-py's
retries. A claim past it is a ``StoreError`` (503).

Optional replication guarantee
------------------------------
With ``IDEMPOTENCY_REDIS_MIN_REPLICAS = n`` every write of a claim (a new
one, or the take-over of a released attempt) and every completion is followed
by ``WAIT n <IDEMPOTENCY_REDIS_WAIT_TIMEOUT>`` in one pipeline, on the
connection that wrote. A claim that fewer than ``n`` replicas acknowledged is released
and answered 503 (the view does not run); a completion that was not
acknowledged is retried as above. ``WAIT`` does not make Redis strongly
consistent: docs/redis.rst lists the windows that remain.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import redis
from django.conf import settings
from django.core import checks
from django.core.cache import caches
from django.core.signals import request_finished, setting_changed
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.dispatch import receiver
from django.utils import timezone
from django.utils.module_loading import import_string
from redis.backoff import AbstractBackoff
from redis.exceptions import AskError, NoScriptError, RedisError, ResponseError

from ..conf import conf
from ..keys import instant, scoped_key
from .base import (
    Claim,
    Decision,
    InUse,
    RequestRecord,
    Store,
    StoredResponse,
    StoreError,
    StoreMisconfigured,
    outcome_of,
)

logger = logging.getLogger(__name__)

IN_FLIGHT = "in_flight"
COMPLETED = "completed"
#: A released attempt, kept until its TTL ends so that the next attempt of the
#: same request gets the same ``request.idempotency_key``.
RELEASED = "released"
#: Prepended to the hash of (scope, key) before the cache's ``make_key``.
KEY_NAMESPACE = "idempotency:"
#: The delays between attempts to store a completion that failed: doubling
#: from the first to the last, then the last until the record expires.
RETRY_FIRST, RETRY_LAST = 0.1, 5.0
DJANGO_REDIS_BACKEND = "django_redis.cache.RedisCache"
CLUSTER_CLIENT = "django_idempotency.stores.redis_cluster.RedisClusterClient"


# The time budget (IDEMPOTENCY_REDIS_TIMEOUT_BUDGET): a deadline per thread,
# set around the store's Redis calls, that the calls check before each attempt
# and that redis-py's own retry loops see through BudgetBackoff.
_deadline = threading.local()


class BudgetExceeded(RedisError):
    """``IDEMPOTENCY_REDIS_TIMEOUT_BUDGET`` ran out before Redis answered.

    A ``RedisError`` that redis-py does not retry: it ends its retry loops."""


def timeout_budget() -> float:
    """``IDEMPOTENCY_REDIS_TIMEOUT_BUDGET`` in seconds."""
    value = conf.raw("IDEMPOTENCY_REDIS_TIMEOUT_BUDGET")
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """The Redis calls of this thread, redis-py's retries included, end within ``seconds``."""
    previous = getattr(_deadline, "at", None)
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = previous


def _left() -> float | None:
    at: float | None = getattr(_deadline, "at", None)
    return None if at is None else at - time.monotonic()


def _check_budget() -> None:
    left = _left()
    if left is not None and left <= 0:
        raise BudgetExceeded("IDEMPOTENCY_REDIS_TIMEOUT_BUDGET ran out before Redis answered")


class BudgetBackoff(AbstractBackoff):
    """A redis-py backoff that ends the retries instead of sleeping past the
    thread's deadline (``within``): redis-py's cluster client retries a
    connection error ten times with a growing delay, which socket timeouts do
    not bound. Without a deadline it is the backoff it wraps."""

    def __init__(self, inner: AbstractBackoff) -> None:
        self.inner = inner

    def reset(self) -> None:
        self.inner.reset()  # type: ignore[no-untyped-call]

    def compute(self, failures: int) -> float:
        delay = float(self.inner.compute(failures))
        left = _left()
        if left is not None and delay >= left:
            # The next attempt could only start at the deadline: give up now.
            raise BudgetExceeded(
                f"IDEMPOTENCY_REDIS_TIMEOUT_BUDGET ran out after {failures} failed attempts"
            )
        return delay


# Before redis-py 5.3, ConnectionPool.get_connection() took the command's name;
# since then, passing it is deprecated.
_POOL_TAKES_NAME = tuple(int(part) for part in redis.__version__.split(".")[:2]) < (5, 3)


def _execute(client: Any, *args: Any) -> Any:
    """``client.execute_command(*args)`` for a command whose reply needs no
    parsing (EVALSHA, EVAL), with fewer of redis-py's layers per call.

    A plain ``redis.Redis`` (django-redis's default and Sentinel clients):
    a connection from its pool, the command sent and its reply read under the
    connection's own ``Retry`` (a connection error disconnects, then the
    command is sent again, as ``execute_command`` does), the connection
    given back. Any other client (Redis Cluster, a single-connection client,
    a subclass) goes through its own ``execute_command``. What is skipped is
    what our replies do not need: response callbacks, and redis-py 8's
    per-command metrics and event hooks.
    """
    _check_budget()
    if type(client) is not redis.Redis or client.connection is not None:
        return client.execute_command(*args)
    pool: Any = client.connection_pool
    conn: Any = pool.get_connection(args[0]) if _POOL_TAKES_NAME else pool.get_connection()
    try:
        # An error reply (NoScriptError) leaves the connection usable; a broken
        # send or read disconnects it there, in redis-py, as for any command.
        retry = getattr(conn, "retry", None)
        if retry is None:
            return _send(conn, args)
        return retry.call_with_retry(lambda: _send(conn, args), lambda _: conn.disconnect())
    finally:
        pool.release(conn)


def _send(conn: Any, args: tuple[Any, ...]) -> Any:
    _check_budget()  # before each attempt of the connection's Retry
    conn.send_command(*args)
    return conn.read_response()


class _Script:
    """A Lua script run by SHA (EVALSHA), loaded on first use on each server."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Any, key: str, *args: Any) -> Any:
        try:
            return _execute(client, "EVALSHA", self.sha, 1, key, *args)
        except NoScriptError:
            return _execute(client, "EVAL", self.source, 1, key, *args)

    def waited(
        self, client: Any, key: str, args: tuple[Any, ...], replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """Run the script, then ``WAIT`` on the same connection (a pipeline):
        its result and how many replicas acknowledged the write."""
        for _ in range(2):
            _check_budget()
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(self.sha, 1, key, *args)
            pipe.wait(replicas, timeout_ms)
            try:
                result, acknowledged = pipe.execute()
            except NoScriptError:  # a new primary after a failover, or a restart
                client.script_load(self.source)
                continue
            return result, int(acknowledged)
        raise NoScriptError(f"script {self.sha} could not be loaded")


# An in-flight value lives LAPSE_MEMORY_MS past its lease, so that the request
# that takes a lapsed claim over knows it did (and logs it); the lease has
# lapsed once the key's PTTL is at most LAPSE_MEMORY_MS.
LAPSE_MEMORY_MS = 3_600_000
# ARGV: in-flight value, lease ms + LAPSE_MEMORY_MS, LAPSE_MEMORY_MS. Returns
# nil if claimed; {value found} if the key holds a record; {value found, ms
# past its lease} if it held a lapsed claim, now ours.
_CLAIM = _Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local current = redis.call('GET', KEYS[1])
if string.sub(current, 1, 20) == '{"state":"in_flight"' then
    local left = redis.call('PTTL', KEYS[1])
    if left >= 0 and left <= tonumber(ARGV[3]) then
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return {current, tonumber(ARGV[3]) - left}
    end
end
return {current}
"""
)
# ARGV: our in-flight value, the completed value, its TTL in ms. Returns 1 if
# stored (or already stored by an earlier attempt of this very completion, so
# that a retry is safe). A key that is gone (our lease lapsed, nobody took it
# over) is ours to fill: no other request can have run meanwhile.
_FINISH = _Script(
    """
local current = redis.call('GET', KEYS[1])
if current == ARGV[2] then return 1 end
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# ARGV: our in-flight value. Returns 1 if the claim was ours and is gone.
_DELETE = _Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
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
# ARGV: the released value found, our in-flight value, lease ms + LAPSE_MEMORY_MS.
# Returns 1 if claimed.
_TAKE_OVER = _Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# ARGV: our in-flight value, lease ms + LAPSE_MEMORY_MS. Returns 1 if the claim
# is (again) ours.
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
    """One record as the Redis store keeps it (see :meth:`RedisStore.lookup`)."""

    scope: str
    key: str
    fingerprint: str
    method: str
    path: str
    state: str
    response: StoredResponse | None


# What json.dumps(meta, separators=(",", ":")) makes, without building an
# encoder per call (json.dumps reuses one only for its default arguments).
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def encode(meta: dict[str, Any], body: bytes = b"") -> bytes:
    # json.dumps escapes newlines inside strings, so the first b"\n" ends the head.
    return _encode_json(meta).encode() + b"\n" + body


def _head(state: str, record: RequestRecord, **more: Any) -> dict[str, Any]:
    """The head of a stored value: its state and the request it is about, then ``more``."""
    return {
        "state": state,
        "scope": record.scope,
        "key": record.key,
        "fingerprint": record.fingerprint,
        "method": record.method,
        "path": record.path,
        **more,
    }


def decode(value: bytes) -> CachedRecord:
    """Read a value written by :class:`RedisStore`."""
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


def min_replicas() -> int:
    """``IDEMPOTENCY_REDIS_MIN_REPLICAS``: replicas that must acknowledge each write."""
    return int(conf.raw("IDEMPOTENCY_REDIS_MIN_REPLICAS"))


def wait_timeout_ms() -> int:
    """``IDEMPOTENCY_REDIS_WAIT_TIMEOUT`` in milliseconds (at least 1: 0 waits forever)."""
    value = conf.raw("IDEMPOTENCY_REDIS_WAIT_TIMEOUT")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return max(1, round(seconds * 1000))


@dataclass(eq=False)
class _Held:
    """What a RedisStore claim holds. The in-flight value is the ownership token."""

    client: Any
    key: str
    token: bytes
    lease_ms: int
    # What remains of the request's IDEMPOTENCY_REDIS_TIMEOUT_BUDGET for its
    # completion or release, once the claim has spent its share.
    budget_left: float = 0.0
    renew_at: float = 0.0
    done: bool = False
    # The completed value once the view's writes committed, while it is being
    # stored; from then on the background thread retries storing it instead
    # of renewing the lease.
    value: bytes | None = None
    ttl_ms: int = 0
    give_up_at: float = 0.0  # monotonic: the record's expiry
    retry_at: float = 0.0
    delay: float = RETRY_FIRST
    attempts: int = 0
    # Orders a renewal against finish/release: once ``done`` is set under it, no
    # renewal can run after their script (a late one would re-claim a released key).
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Keeper:
    """A daemon thread (one per process and job) that extends the lease of the
    live claims it holds, or retries the completions that could not be stored.
    Two of them: retries wait on servers that are down, which must not delay
    the renewal of healthy claims."""

    def __init__(self, name: str, *, retries: bool) -> None:
        self._name = name
        self._retries = retries
        self._lock = threading.Lock()
        self._held: set[_Held] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # When the thread next wakes by itself (monotonic); set under _lock.
        self._next_at = 0.0

    def hold(self, held: _Held) -> None:
        if held.value is None:
            held.renew_at = time.monotonic() + held.lease_ms / 3000
        with self._lock:
            self._held.add(held)
            if self._thread is None or not self._thread.is_alive():
                # First claim in this process (threads do not survive a fork).
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            # Wake the thread only if it would sleep past this claim's renewal.
            # With one lease for all it rarely does: a wake-up on every claim
            # cost about 0.1 ms of CPU per request (benchmarks/profile_view.py).
            wake = self._due(held) < self._next_at
        if wake:
            self._wake.set()

    def drop(self, held: _Held) -> None:
        with held.lock:
            held.done = True
        with self._lock:
            self._held.discard(held)

    def forget(self, held: _Held) -> None:
        """Stop renewing ``held`` but leave it usable (unlike :meth:`drop`)."""
        with self._lock:
            self._held.discard(held)

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                held = list(self._held)
            now = time.monotonic()
            # Servers that just failed a retry: the other completions waiting
            # for them wait for their next turn instead of each timing out now.
            down: set[int] = set()
            for one in held:
                if self._due(one) > now:
                    continue
                server = id(getattr(one.client, "connection_pool", one.client))
                try:
                    if not self._retries:
                        self._renew(one)
                    elif server in down:
                        one.retry_at = now + one.delay
                    elif not _complete(one, background=True):
                        down.add(server)
                except Exception:  # keep the others going whatever happens
                    logger.exception("Keeping idempotency claim %s failed", one.key)
            with self._lock:
                next_at = min((self._due(h) for h in self._held), default=now + 60)
                self._next_at = next_at
            self._wake.wait(max(0.0, next_at - time.monotonic()))

    def _due(self, held: _Held) -> float:
        """When ``held`` next needs this thread (monotonic)."""
        if self._retries:
            return held.retry_at
        # A claim whose completion has started is not renewed; look again later.
        return held.renew_at if held.value is None else time.monotonic() + 60

    def _renew(self, held: _Held) -> None:
        with held.lock:
            if held.done or held.value is not None:
                return
            held.renew_at = time.monotonic() + held.lease_ms / 3000
            try:
                # Bounded, as this thread renews every claim of the process in
                # turn; past two thirds of the lease the claim has lapsed anyway.
                with within(min(timeout_budget(), held.lease_ms / 1500)):
                    kept = _RENEW(
                        held.client, held.key, held.token, held.lease_ms + LAPSE_MEMORY_MS
                    )
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


_keeper = _Keeper("idempotency-lease-renewer", retries=False)
_retrier = _Keeper("idempotency-completion-retrier", retries=True)


def _drop(held: _Held) -> None:
    """The claim is over (stored, released or given up): nobody keeps it."""
    _keeper.drop(held)
    _retrier.forget(held)


def _start_completion(held: _Held, value: bytes, ttl_ms: int, give_up_at: float) -> None:
    with held.lock:
        if held.done:  # released meanwhile
            return
        held.value, held.ttl_ms, held.give_up_at = value, ttl_ms, give_up_at
        # The first attempt is ours, now; the keeper takes the later ones.
        held.retry_at = time.monotonic() + RETRY_FIRST
    _complete(held)


def _complete(held: _Held, *, background: bool = False) -> bool:
    """Store ``held.value`` (owner-checked); on failure, leave it to the keeper.
    False if it is to be retried."""
    with held.lock:
        if held.done or held.value is None:
            return True
        held.attempts += 1
        replicas = min_replicas()
        problem: str | None = None
        stored = False
        # In the request, what its budget has left; in the background, a budget per attempt.
        budget = timeout_budget() if background else max(0.0, held.budget_left)
        started = time.monotonic()
        try:
            args = (held.token, held.value, held.ttl_ms)
            with within(budget):
                if replicas:
                    stored, acknowledged = _FINISH.waited(
                        held.client, held.key, args, replicas, wait_timeout_ms()
                    )
                    if stored and acknowledged < replicas:
                        problem = (
                            f"WAIT: {acknowledged} of {replicas} replicas acknowledged it "
                            "(IDEMPOTENCY_REDIS_MIN_REPLICAS)"
                        )
                else:
                    stored = _FINISH(held.client, held.key, *args)
        except RedisError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            if not background:
                held.budget_left -= time.monotonic() - started
        now = time.monotonic()
        expired = now >= held.give_up_at
        if problem is None or expired:
            held.done = True
        else:
            held.retry_at = now + held.delay
            held.delay = min(RETRY_LAST, held.delay * 2)
        attempts = held.attempts
    if problem is None:
        _drop(held)
        if not stored:
            logger.warning(
                "Idempotency claim %s had lost its lease; its response was not stored, and "
                "the request that took the key over keeps its own.",
                held.key,
            )
        elif attempts > 1:
            logger.warning(
                "Stored the response of idempotency claim %s at attempt %d.", held.key, attempts
            )
        return True
    if expired:
        _drop(held)
        logger.error(
            "Gave up storing the response of idempotency claim %s after %d attempts (%s): "
            "the record has expired, so a retry runs the view again.",
            held.key,
            attempts,
            problem,
        )
        return True
    if attempts == 1:
        # Once, not at every attempt: an outage would flood the log.
        logger.error(
            "Could not store the response of idempotency claim %s (%s); retrying in the "
            "background until it is stored. Until then the key answers 'in use'.",
            held.key,
            problem,
        )
    if not background:
        _keeper.forget(held)
        _retrier.hold(held)
    return False


class _AwaitingCommit:
    """A completion that waits for the commit of the view's transactions."""

    def __init__(
        self,
        store: RedisStore,
        claim: Claim,
        completion: tuple[bytes, int, float],
        open_on: list[BaseDatabaseWrapper],
    ) -> None:
        self.store = store
        self.claim = claim
        self.held: _Held = claim.state
        self.completion = completion
        self.waiting = {connection.alias for connection in open_on}
        self.callbacks: dict[str, Any] = {}
        for connection in open_on:
            callback = functools.partial(self.committed, connection.alias)
            self.callbacks[connection.alias] = callback
            transaction.on_commit(callback, using=connection.alias, robust=True)

    def committed(self, alias: str) -> None:
        self.waiting.discard(alias)
        if not self.waiting:
            _start_completion(self.held, *self.completion)

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
            _keeper.forget(self.held)
            return
        # Django dropped the callback: the transaction rolled back or its commit
        # failed. The writes are gone, so the key must be free for a retry.
        logger.warning(
            "The transaction of idempotency claim %s did not commit; the claim is released "
            "so that a retry runs the view again.",
            self.held.key,
        )
        self.store.release(self.claim)


_awaiting = threading.local()


def _real_atomic_blocks() -> list[BaseDatabaseWrapper]:
    """The connections of this thread inside an atomic block that may commit:
    not only a ``TestCase``'s, which never does."""
    return [
        connection
        for connection in connections.all(initialized_only=True)
        if connection.in_atomic_block
        and not all(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)
    ]


def _on_request_finished(**kwargs: Any) -> None:
    pending: list[_AwaitingCommit] = getattr(_awaiting, "pending", [])
    _awaiting.pending = []
    for one in pending:
        try:
            one.request_finished()
        except Exception:
            logger.exception("Ending idempotency claim %s failed", one.held.key)


request_finished.connect(_on_request_finished, dispatch_uid="django_idempotency.stores.redis")

# The django-redis cache object of each alias, found once: ``caches[alias]``
# is a lookup in an asgiref Local, which costs more than anything else that
# names the Redis key or picks the client. Sharing it between threads is safe:
# its client is thread-safe, and the connection pools are shared anyway
# (django-redis keeps one per server). Forgotten when a setting changes.
_caches: dict[str, Any] = {}


def _cache(alias: str) -> Any:
    try:
        return _caches[alias]
    except KeyError:
        cache = _caches[alias] = caches[alias]
        return cache


@receiver(setting_changed)
def _forget_caches(*, setting: str, **kwargs: Any) -> None:
    if setting == "CACHES" or setting.startswith("IDEMPOTENCY_"):
        _caches.clear()
        _aliases_checked.clear()


# Redis Cluster detection, once per cache alias and process (see _refuse_cluster).
_server_checked: set[tuple[str, str]] = set()
# The aliases whose (alias, LOCATION) is in _server_checked, forgotten when a
# setting changes: most requests need not look the location up.
_aliases_checked: set[str] = set()


class RedisStore(Store):
    """Stores records in Redis through django-redis (``IDEMPOTENCY_CACHE``)."""

    needs_purge = False

    @property
    def alias(self) -> str:
        return conf.IDEMPOTENCY_CACHE

    def redis_key(self, scope: str, key: str) -> str:
        """The Redis key of (scope, key), with the cache's prefix and version."""
        return str(_cache(self.alias).make_key(KEY_NAMESPACE + scoped_key(scope, key)))

    def client(self) -> Any:
        """The raw redis-py client of the cache alias (the primary, for writes):
        what ``django_redis.get_redis_connection(alias, write=True)`` returns."""
        try:
            get_client = _cache(self.alias).client.get_client
        except AttributeError:  # as get_redis_connection: not a django-redis cache
            raise NotImplementedError("This backend does not support this feature") from None
        return get_client(write=True)

    def lookup(self, scope: str, key: str) -> CachedRecord | None:
        """The record of (scope, key), for inspection; ``None`` if there is none."""
        value = self.client().get(self.redis_key(scope, key))
        return decode(value) if value is not None else None

    def begin(self, record: RequestRecord) -> Decision:
        key = self.redis_key(record.scope, record.key)
        token = self._in_flight(record, record.created_at)
        first_claimed_at = None
        lease_ms = max(1, round(conf.lease_seconds * 1000))
        kept_ms = lease_ms + LAPSE_MEMORY_MS
        replicas = min_replicas()
        budget = timeout_budget()
        started = time.monotonic()
        acknowledged = 0
        try:
            with within(budget):
                client = self._client()
                self._refuse_cluster(client)
                claim_args = (token, kept_ms, LAPSE_MEMORY_MS)
                if replicas:
                    reply, acknowledged = _CLAIM.waited(
                        client, key, claim_args, replicas, wait_timeout_ms()
                    )
                else:
                    reply = _CLAIM(client, key, *claim_args)
                existing: bytes = reply[0] if reply else b""
                found = decode(existing) if existing else None
                if found is not None and len(reply) > 1:
                    self._log_lapsed(key, found, past_ms=int(reply[1]))
                    found = None  # the lapsed claim is ours now
                if found is not None and found.state == RELEASED:
                    # An earlier attempt was released: take its place, keeping when
                    # the request's first attempt began if it is the same request.
                    meta = json.loads(existing.partition(b"\n")[0])
                    if found.fingerprint == record.fingerprint:
                        first_claimed_at = datetime.fromisoformat(meta["first"])
                        if record.created_at.tzinfo is not None:  # instant() wrote UTC
                            first_claimed_at = first_claimed_at.replace(tzinfo=dt_timezone.utc)
                        token = self._in_flight(record, first_claimed_at)
                    take_over_args = (existing, token, kept_ms)
                    if replicas:
                        # WAIT on the connection that wrote: one pipeline.
                        taken, acknowledged = _TAKE_OVER.waited(
                            client, key, take_over_args, replicas, wait_timeout_ms()
                        )
                    else:
                        taken = _TAKE_OVER(client, key, *take_over_args)
                    if not taken:
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
            self._log_failure(exc)
            # MOVED or ASK reach us only through a client that does not follow
            # the cluster's slots (the cluster client follows them itself).
            error = StoreMisconfigured if isinstance(exc, AskError) else StoreError
            raise error(f"{type(exc).__name__}: {exc}") from exc
        if found is not None:
            return outcome_of(record, found.fingerprint, found.response)
        held = _Held(client, key, token, lease_ms)
        held.budget_left = budget - (time.monotonic() - started)
        if replicas and acknowledged < replicas:
            # A failover now could lose the claim and let a duplicate run
            # beside this request: refuse rather than run unprotected.
            with contextlib.suppress(RedisError), within(max(0.0, held.budget_left)):
                _DELETE(client, key, token)  # else it lapses with its lease
            logger.error(
                "Idempotency claim %s reached %d of %d replicas within "
                "IDEMPOTENCY_REDIS_WAIT_TIMEOUT; answering 503.",
                key,
                acknowledged,
                replicas,
            )
            raise StoreError(f"the claim reached {acknowledged} of {replicas} replicas")
        _keeper.hold(held)
        return Claim(record, held, first_claimed_at)

    def _client(self) -> Any:
        """:meth:`client`, for a request: a cache without a raw client is a
        configuration error (E012), not an outage."""
        try:
            return self.client()
        except NotImplementedError:
            raise StoreMisconfigured(
                f"cache {self.alias!r} gives no raw redis-py client (system check "
                f"django_idempotency.E012): set its BACKEND to {DJANGO_REDIS_BACKEND!r} "
                "with the default client, SentinelClient or "
                f"CLIENT_CLASS {CLUSTER_CLIENT!r}"
            ) from None

    @staticmethod
    def _log_lapsed(key: str, found_record: CachedRecord, past_ms: int) -> None:
        """A claim whose worker stopped renewing it (it died, or stalled past
        the lease) is taken over: its view may have had effects, so say so."""
        logger.warning(
            "Idempotency claim %s (%s %s) lapsed %.1f s after its lease "
            "(IDEMPOTENCY_LEASE) ran out: its worker stopped renewing it. This request "
            "takes the key over and runs the view; the first run may have had effects.",
            key,
            found_record.method,
            found_record.path,
            past_ms / 1000,
        )

    @staticmethod
    def _in_flight(record: RequestRecord, first_claimed_at: datetime) -> bytes:
        return encode(
            _head(
                IN_FLIGHT,
                record,
                # The owner: finish, release and renew act only on this exact value.
                owner=os.urandom(16).hex(),
                first=instant(first_claimed_at),
            )
        )

    def _refuse_cluster(self, client: Any) -> None:
        """A cluster node answers MOVED for most keys to a client that does not
        follow the cluster: say so once, plainly, instead of 503s for most keys."""
        alias = self.alias
        if alias in _aliases_checked:  # since the last change of settings
            return
        location = repr(getattr(settings, "CACHES", {}).get(alias, {}).get("LOCATION"))
        if (alias, location) in _server_checked:
            _aliases_checked.add(alias)
            return
        from redis.cluster import RedisCluster

        if not isinstance(client, RedisCluster):
            try:
                enabled = client.info("cluster").get("cluster_enabled")
            except ResponseError:  # INFO renamed or refused: nothing to learn
                enabled = 0
            if str(enabled) == "1":
                logger.error(
                    "The Redis server of cache %r is a Redis Cluster node, but the cache's "
                    "client is not cluster-aware; set its OPTIONS['CLIENT_CLASS'] to %r.",
                    alias,
                    CLUSTER_CLIENT,
                )
                raise StoreMisconfigured(
                    f"cache {alias!r} points at a Redis Cluster without a "
                    f"cluster client ({CLUSTER_CLIENT})"
                )
        _server_checked.add((alias, location))
        _aliases_checked.add(alias)

    @staticmethod
    def _log_failure(exc: BaseException) -> None:
        if isinstance(exc, AskError):  # MovedError is one
            logger.error(
                "Redis Cluster configuration error (%s: %s): the cache's client does not "
                "follow the cluster's slots; see CLIENT_CLASS %r.",
                type(exc).__name__,
                exc,
                CLUSTER_CLIENT,
                exc_info=exc,
            )
        else:
            logger.error(
                "The Redis store is unavailable (%s: %s); answering 503.",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    def finish(self, claim: Claim, response: StoredResponse) -> None:
        held: _Held | None = claim.state
        if held is None:  # fail-open: nothing was claimed
            return
        record = claim.record
        value = encode(
            _head(COMPLETED, record, status=response.status, headers=response.headers),
            response.body,
        )
        seconds = (record.expires_at - timezone.now()).total_seconds()
        completion = (value, max(1, round(seconds * 1000)), time.monotonic() + seconds)
        open_on = _real_atomic_blocks()
        if not open_on:
            _start_completion(held, *completion)
            return
        # The view's writes commit after we return: store the response only
        # once they have. Until then the lease is kept renewed.
        awaiting = _AwaitingCommit(self, claim, completion, open_on)
        pending = getattr(_awaiting, "pending", None)
        if pending is None:
            pending = _awaiting.pending = []
        pending.append(awaiting)

    def release(self, claim: Claim, exc: BaseException | None = None) -> None:
        held: _Held | None = claim.state
        if held is None:
            return
        _drop(held)
        record = claim.record
        released = encode(_head(RELEASED, record, first=instant(claim.anchor)))
        remaining = (claim.anchor_expires_at - timezone.now()).total_seconds()
        ttl_ms = max(1, round(remaining * 1000))
        try:
            with within(max(0.0, held.budget_left)):
                _RELEASE(held.client, held.key, held.token, released, ttl_ms)
        except RedisError as error:
            logger.warning(
                "Could not release idempotency claim %s (%s); the key stays in use until "
                "its lease lapses.",
                held.key,
                error,
            )

    def abandon(self, claim: Claim) -> None:
        # No more renewals: the key lapses with its lease (IDEMPOTENCY_LEASE).
        held: _Held | None = claim.state
        if held is not None:
            _drop(held)

    @classmethod
    def check(cls) -> list[checks.CheckMessage]:
        """The Redis store's system checks: its cache and its settings."""
        return _check_cache() + _check_lease() + _check_replicas() + _check_timeout_budget()

    @classmethod
    def check_deployment(cls) -> list[checks.CheckMessage]:
        """Deploy checks that ask the Redis server (``manage.py check --deploy``)."""
        alias = conf.IDEMPOTENCY_CACHE
        try:
            client = cls().client()
            cls()._refuse_cluster(client)
        except StoreError as exc:
            return [
                _error(
                    43,
                    f"IDEMPOTENCY_CACHE {alias!r}: {exc}.",
                    f"Set CACHES[{alias!r}]['OPTIONS']['CLIENT_CLASS'] to {CLUSTER_CLIENT!r}.",
                )
            ]
        except Exception as exc:  # the server is not reachable from here: not our call
            return [
                checks.Warning(
                    f"Could not ask the Redis server of cache {alias!r} whether it is a "
                    f"cluster: {exc}",
                    id="django_idempotency.W043",
                )
            ]
        return []


def _error(id_: int, msg: str, hint: str) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"django_idempotency.E{id_:03d}")


def _check_cache() -> list[checks.CheckMessage]:
    alias = conf.raw("IDEMPOTENCY_CACHE")
    configured = getattr(settings, "CACHES", {})
    if not isinstance(alias, str) or alias not in configured:
        return [
            _error(
                10,
                f"IDEMPOTENCY_CACHE {alias!r} is not a cache alias in CACHES.",
                "Add a django_redis.cache.RedisCache entry to CACHES under that alias, or "
                "set IDEMPOTENCY_CACHE to the alias of one.",
            )
        ]
    from django_redis.cache import RedisCache

    backend = str(configured[alias].get("BACKEND", ""))
    client_class = str(configured[alias].get("OPTIONS", {}).get("CLIENT_CLASS", ""))
    try:
        backend_class = import_string(backend)
    except ImportError:
        backend_class = None
    is_django_redis = isinstance(backend_class, type) and issubclass(backend_class, RedisCache)
    if is_django_redis and not client_class.endswith("ShardClient"):
        return []
    if client_class.endswith("ShardClient"):
        hint = (
            "django-redis's ShardClient spreads keys over servers with no raw client "
            "for scripts; use the default client, SentinelClient, or "
            f"{CLUSTER_CLIENT!r} for Redis Cluster."
        )
    elif backend == "django.core.cache.backends.redis.RedisCache":
        hint = (
            "Django's own RedisCache gives no access to a raw redis-py client, which the "
            "store's Lua scripts need: use BACKEND 'django_redis.cache.RedisCache' "
            "(pip install 'django-idempotency[redis]') with the same LOCATION."
        )
    else:
        hint = (
            f"Use BACKEND 'django_redis.cache.RedisCache' (or a subclass). {backend} is "
            "not shared between processes, or cannot run scripts, so a retry that reaches "
            "another worker would run the view again."
        )
    return [
        _error(
            12,
            f"The cache {alias!r} ({backend}) cannot hold idempotency records: the "
            "Redis store needs a django-redis cache that all processes share.",
            hint,
        )
    ]


def _check_lease() -> list[checks.CheckMessage]:
    from ..conf import MIN_LEASE, SHORT_LEASE

    lease = conf.raw("IDEMPOTENCY_LEASE")
    if isinstance(lease, timedelta):
        lease = lease.total_seconds()
    if (
        isinstance(lease, bool)
        or not isinstance(lease, (int, float))
        or not math.isfinite(lease)
        or lease < MIN_LEASE.total_seconds()
    ):
        return [
            _error(
                13,
                f"IDEMPOTENCY_LEASE {conf.raw('IDEMPOTENCY_LEASE')!r} is not a duration of "
                f"{MIN_LEASE.total_seconds():g} seconds or more.",
                "Use seconds (e.g. 30) or a datetime.timedelta; the lease is renewed while "
                "the view runs and bounds how long a dead worker's key stays in use.",
            )
        ]
    if lease < SHORT_LEASE.total_seconds():
        return [
            checks.Warning(
                f"IDEMPOTENCY_LEASE {conf.raw('IDEMPOTENCY_LEASE')!r} is under "
                f"{SHORT_LEASE.total_seconds():g} second: on a loaded server a renewal "
                "(every third of the lease) can come too late, and a duplicate then runs.",
                hint="The default, 30 seconds, only bounds how long a dead worker's key stays "
                "in use; it does not limit how long a view may run.",
                id="django_idempotency.W020",
            )
        ]
    return []


def _check_replicas() -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    replicas = conf.raw("IDEMPOTENCY_REDIS_MIN_REPLICAS")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        messages.append(
            _error(
                41,
                f"IDEMPOTENCY_REDIS_MIN_REPLICAS must be a whole number, 0 or more, not "
                f"{replicas!r}.",
                "0 (the default) does not wait for replicas; 1 or more runs WAIT after each "
                "claim and completion.",
            )
        )
    timeout = conf.raw("IDEMPOTENCY_REDIS_WAIT_TIMEOUT")
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        messages.append(
            _error(
                42,
                f"IDEMPOTENCY_REDIS_WAIT_TIMEOUT {timeout!r} is not a positive duration.",
                "Seconds (e.g. 0.5) or a datetime.timedelta: how long a claim waits for "
                "IDEMPOTENCY_REDIS_MIN_REPLICAS replicas before answering 503.",
            )
        )
    alias = conf.raw("IDEMPOTENCY_CACHE")
    options = (
        getattr(settings, "CACHES", {}).get(alias, {}).get("OPTIONS", {})
        if isinstance(alias, str)
        else {}
    )
    if (
        isinstance(replicas, int)
        and replicas > 0
        and str(options.get("CLIENT_CLASS", "")) == CLUSTER_CLIENT
    ):
        messages.append(
            _error(
                44,
                "IDEMPOTENCY_REDIS_MIN_REPLICAS needs WAIT on the connection that wrote, which "
                "the cluster client does not offer.",
                "Leave IDEMPOTENCY_REDIS_MIN_REPLICAS at 0 on Redis Cluster, or use Sentinel.",
            )
        )
    return messages


def _check_timeout_budget() -> list[checks.CheckMessage]:
    budget = conf.raw("IDEMPOTENCY_REDIS_TIMEOUT_BUDGET")
    seconds = budget.total_seconds() if isinstance(budget, timedelta) else budget
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        return [
            _error(
                45,
                f"IDEMPOTENCY_REDIS_TIMEOUT_BUDGET {budget!r} is not a positive duration.",
                "Seconds (e.g. 3) or a datetime.timedelta: the most time one request waits "
                "for Redis before it is answered 503.",
            )
        ]
    replicas = conf.raw("IDEMPOTENCY_REDIS_MIN_REPLICAS")
    timeout = conf.raw("IDEMPOTENCY_REDIS_WAIT_TIMEOUT")
    wait = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    if (
        isinstance(replicas, int)
        and replicas > 0
        and isinstance(wait, (int, float))
        and seconds < 2 * wait
    ):
        return [
            checks.Warning(
                f"IDEMPOTENCY_REDIS_TIMEOUT_BUDGET ({seconds:g} s) is under twice "
                f"IDEMPOTENCY_REDIS_WAIT_TIMEOUT ({wait:g} s): a request WAITs for replicas "
                "at its claim and at its completion, and may run out of budget on a healthy "
                "deployment whose replica is slow.",
                hint="Raise the budget, or lower the WAIT timeout.",
                id="django_idempotency.W045",
            )
        ]
    return []
