"""The Redis store: one Redis key per (scope, key), through django-redis
(docs/redis.rst says how a claim lives and what each failure of Redis does)."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.core.cache import caches
from django.core.checks import CheckMessage
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone
from redis.cluster import RedisCluster
from redis.exceptions import AskError, RedisError, ResponseError

from ...conf import conf
from ...keys import instant, scoped_key
from .. import base
from .checks import CLUSTER_CLIENT, check_server, check_settings
from .claims import AwaitingCommit, Held, drop, open_atomic_blocks, renewer, start_completion
from .records import COMPLETED, IN_FLIGHT, RELEASED, RedisRecord, decode, encode
from .scripts import CLAIM, DELETE, LAPSE_MEMORY_MS, REPLACE, min_replicas, timeout_budget, within

logger = logging.getLogger("django_idempotency.stores.redis")

#: Prepended to the hash of (scope, key) before the cache's ``make_key``.
KEY_NAMESPACE = "idempotency:"

# Per process, forgotten when a setting changes. The cache object of each
# alias: ``caches[alias]`` is a lookup in an asgiref Local, dearer than all else
# that names a key or picks a client, and the object and its connection pools
# are thread-safe. And the aliases whose server is known not to be a cluster
# node behind a plain client, so that a request need not ask again.
_caches: dict[str, Any] = {}
_not_a_stray_cluster: set[str] = set()


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
        _not_a_stray_cluster.clear()


class RedisStore(base.Store):
    """Stores records in Redis through django-redis (``IDEMPOTENCY_CACHE``)."""

    needs_purge = False

    @property
    def alias(self) -> str:
        return conf.IDEMPOTENCY_CACHE

    def redis_key(self, scope: str, key: str) -> str:
        """The Redis key of (scope, key), with the cache's prefix and version."""
        return str(_cache(self.alias).make_key(KEY_NAMESPACE + scoped_key(scope, key)))

    def client(self) -> Any:
        """The cache's raw redis-py client, the primary's; ``NotImplementedError``
        for a cache that is not django-redis's (as ``get_redis_connection`` does)."""
        try:
            get_client = _cache(self.alias).client.get_client
        except AttributeError:
            raise NotImplementedError("This backend does not support this feature") from None
        return get_client(write=True)

    def lookup(self, scope: str, key: str) -> RedisRecord | None:
        """The record of (scope, key), for inspection; ``None`` if there is none."""
        value = self.client().get(self.redis_key(scope, key))
        return decode(value) if value is not None else None

    def begin(self, record: base.RequestRecord) -> base.Decision:
        key = self.redis_key(record.scope, record.key)
        token, first_claimed_at = self._in_flight(record, record.created_at), None
        lease_ms = max(1, round(conf.lease_seconds * 1000))
        kept_ms, replicas = lease_ms + LAPSE_MEMORY_MS, min_replicas()
        budget, started = timeout_budget(), time.monotonic()
        try:
            with within(budget):
                client = self._client()
                self.check_cluster(client)
                claim_args = (token, kept_ms, LAPSE_MEMORY_MS)
                reply, acknowledged = CLAIM.write(client, key, claim_args, replicas)
                found = decode(reply[0]) if reply else None
                if found is not None and len(reply) > 1:
                    self._log_lapsed(key, found, past_ms=int(reply[1]))
                    found = None  # the lapsed claim is ours now
                if found is not None and found.state == RELEASED:
                    # Take a released attempt's place; the same request keeps
                    # when its first attempt began.
                    if found.fingerprint == record.fingerprint and found.first_claimed_at:
                        first_claimed_at = found.first_claimed_at
                        if record.created_at.tzinfo is not None:  # instant() wrote UTC
                            first_claimed_at = first_claimed_at.replace(tzinfo=dt_timezone.utc)
                        token = self._in_flight(record, first_claimed_at)
                    args = (reply[0], token, kept_ms)
                    taken, acknowledged = REPLACE.write(client, key, args, replicas)
                    if not taken:
                        return base.InUse()  # another attempt took it over first
                    found = None
        except (RedisError, ValueError, KeyError) as exc:
            if conf.IDEMPOTENCY_FAIL_OPEN and isinstance(exc, RedisError):
                logger.warning(
                    "Redis is unavailable (%s); IDEMPOTENCY_FAIL_OPEN is on, so the view "
                    "runs without idempotency protection.",
                    exc,
                )
                return base.Claim(record, None)
            self._log_failure(exc)
            # MOVED or ASK reach us only through a client that does not follow
            # the cluster's slots (the cluster client follows them itself).
            error = base.StoreMisconfigured if isinstance(exc, AskError) else base.StoreError
            raise error(f"{type(exc).__name__}: {exc}") from exc
        if found is not None:
            return base.outcome_of(record, found.fingerprint, found.response)
        held = Held(client, key, token, lease_ms, budget_left=budget - time.monotonic() + started)
        if replicas and acknowledged < replicas:
            # A failover now could lose the claim and let a duplicate run
            # beside this request: refuse rather than run unprotected.
            try:
                with within(max(0.0, held.budget_left)):
                    DELETE(client, key, token)
            except RedisError:
                pass  # it lapses with its lease
            logger.error(
                "Idempotency claim %s reached %d of %d replicas within "
                "IDEMPOTENCY_REDIS_WAIT_TIMEOUT; answering 503.",
                key,
                acknowledged,
                replicas,
            )
            raise base.StoreError(f"the claim reached {acknowledged} of {replicas} replicas")
        renewer.hold(held)
        return base.Claim(record, held, first_claimed_at)

    def finish(self, claim: base.Claim, response: base.StoredResponse) -> None:
        held: Held | None = claim.state
        if held is None:  # fail-open: nothing was claimed
            return
        record = claim.record
        meta = {"status": response.status, "headers": response.headers}
        value = encode(COMPLETED, record, response.body, **meta)
        seconds = (record.expires_at - timezone.now()).total_seconds()
        completion = (value, max(1, round(seconds * 1000)), time.monotonic() + seconds)
        open_on = open_atomic_blocks()
        if open_on:  # the view's writes commit after we return: store it once they have
            AwaitingCommit(held, completion, open_on, lambda: self.release(claim))
        else:
            start_completion(held, *completion)

    def release(self, claim: base.Claim, exc: BaseException | None = None) -> None:
        held: Held | None = claim.state
        if held is None:
            return
        drop(held)
        released = encode(RELEASED, claim.record, first=instant(claim.anchor))
        remaining = (claim.anchor_expires_at - timezone.now()).total_seconds()
        try:
            with within(max(0.0, held.budget_left)):
                REPLACE(held.client, held.key, held.token, released, max(1, round(remaining * 1e3)))
        except RedisError as error:
            logger.warning(
                "Could not release idempotency claim %s (%s); the key stays in use until "
                "its lease lapses.",
                held.key,
                error,
            )

    def abandon(self, claim: base.Claim) -> None:
        # No more renewals: the key lapses with its lease (IDEMPOTENCY_LEASE).
        if claim.state is not None:
            drop(claim.state)

    @classmethod
    def check(cls) -> list[CheckMessage]:
        """The store's system checks: its cache and its settings."""
        return check_settings()

    @classmethod
    def check_deployment(cls) -> list[CheckMessage]:
        """Whether the server is a Redis Cluster node behind a plain client."""
        return check_server(cls())

    def check_cluster(self, client: Any) -> None:
        """A cluster node answers MOVED for most keys to a client that does not
        follow the cluster: say so once, plainly, instead of 503s for most keys."""
        if self.alias in _not_a_stray_cluster:
            return
        if not isinstance(client, RedisCluster):
            try:
                enabled = client.info("cluster").get("cluster_enabled")
            except ResponseError:  # INFO renamed or refused: nothing to learn
                enabled = 0
            if str(enabled) == "1":
                logger.error(
                    "The Redis server of cache %r is a Redis Cluster node, but the cache's "
                    "client is not cluster-aware; set its OPTIONS['CLIENT_CLASS'] to %r.",
                    self.alias,
                    CLUSTER_CLIENT,
                )
                raise base.StoreMisconfigured(
                    f"cache {self.alias!r} points at a Redis Cluster without a "
                    f"cluster client ({CLUSTER_CLIENT})"
                )
        _not_a_stray_cluster.add(self.alias)

    def _client(self) -> Any:
        # A cache without a raw client is a configuration error (E012), not an outage.
        try:
            return self.client()
        except NotImplementedError:
            raise base.StoreMisconfigured(
                f"cache {self.alias!r} gives no raw redis-py client (system check "
                "django_idempotency.E012)"
            ) from None

    @staticmethod
    def _in_flight(record: base.RequestRecord, first_claimed_at: datetime) -> bytes:
        # The owner: finish, release and renew act only on this exact value.
        owner = os.urandom(16).hex()
        return encode(IN_FLIGHT, record, owner=owner, first=instant(first_claimed_at))

    @staticmethod
    def _log_lapsed(key: str, found: RedisRecord, past_ms: int) -> None:
        # Its worker stopped renewing it (it died, or stalled past the lease):
        # its view may have had effects, so say so.
        logger.warning(
            "Idempotency claim %s (%s %s) lapsed %.1f s after its lease (IDEMPOTENCY_LEASE) "
            "ran out: its worker stopped renewing it. This request takes the key over and "
            "runs the view; the first run may have had effects.",
            key,
            found.method,
            found.path,
            past_ms / 1000,
        )

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
            name = type(exc).__name__
            logger.error(
                "The Redis store is unavailable (%s: %s); answering 503.", name, exc, exc_info=exc
            )
