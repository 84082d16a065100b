"""At scale, on real servers that the test starts on free ports (docs/scaling.rst):

* PgBouncer 1.18+ in transaction mode (and session mode), with fewer server connections than
  concurrent requests, in front of a PostgreSQL: the test app under gunicorn,
  raced with duplicates of every key, runs each operation exactly once, with
  the claim function and without it;
* a streaming replica (``pg_basebackup -R``) behind a primary/replica router,
  with WAL replay paused so it really lags: guarded views read the primary,
  exactly once still holds, and the admin's bulk actions write to the primary.

One pass only (the servers are the test's own): the PostgreSQL pass of scripts/test.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

import psycopg
import pytest

from tests.helpers import poll
from tests.servers.http import Reply, Server, gunicorn
from tests.servers.postgres import Cluster, cluster_of_the_pass, pgbouncer, streaming_replica

pytestmark = pytest.mark.slow

KEYS = 40
COPIES = 3  # concurrent sends of each key
CLIENTS = 16


@pytest.fixture(scope="module")
def primary() -> Iterator[Cluster]:
    with cluster_of_the_pass() as cluster:
        yield cluster


def app_database(cluster: Cluster, name: str) -> str:
    """A database on ``cluster`` migrated for the test app, with alice and a superuser."""
    url = cluster.create_database(name)

    def django(*args: str) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "TEST_STANDBY_URL"}
        subprocess.run(
            [sys.executable, "-m", "django", *args, "--settings", "tests.settings"],
            env=dict(environ, DATABASE_URL=url),
            check=True,
            capture_output=True,
        )

    django("migrate", "--no-input", "-v", "0")
    django(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('alice', password='alice-pw'); "
        "User.objects.create_superuser('root', password='root-pw')",
    )
    return url


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, params or None)
        return list(cursor.fetchall()) if cursor.description else []


def race(server: Server, prefix: str) -> list[Reply]:
    """COPIES concurrent sends of each of KEYS keys; every send retries "in use"
    until the key is answered. Returns each send's final answer."""

    def send(n: int) -> Reply:
        key = f"{prefix}-{n % KEYS}"
        deadline = time.monotonic() + 120
        while True:
            reply = server.request(
                "/t/widgets",
                json.dumps({"name": key}).encode(),
                headers={"Idempotency-Key": key, "X-Test-Delay": "0.05"},
                timeout=60,
            )
            in_use = reply.status == 409 and b"idempotency_key_in_use" in reply.body
            if not in_use or time.monotonic() > deadline:
                return reply
            time.sleep(0.05)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(send, range(KEYS * COPIES)))


def assert_exactly_once(replies: list[Reply], url: str, prefix: str) -> None:
    assert [r.status for r in replies if r.status != 201] == [], [
        r.body[:300] for r in replies if r.status != 201
    ][:3]
    runs = dict(
        sql(
            url,
            "SELECT name, count(*) FROM testapp_widget WHERE name LIKE %s GROUP BY name",
            f"{prefix}-%",
        )
    )
    assert len(runs) == KEYS and set(runs.values()) == {1}, runs
    replayed = sum(r.headers.get("Idempotent-Replayed") == "true" for r in replies)
    assert replayed == KEYS * (COPIES - 1)


# PgBouncer, transaction mode.


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_exactly_once_behind_pgbouncer(primary: Cluster, mode: str) -> None:
    strict = os.environ.get("REQUIRE_SERVICES", os.environ.get("CI", "")) not in ("", "0", "false")
    if not (shutil.which("pgbouncer") or os.path.exists("/usr/sbin/pgbouncer")) and not strict:
        pytest.skip("needs pgbouncer (scripts/test installs it)")
    name = f"bounced_{mode}"
    url = app_database(primary, name)
    # 4 server connections for up to 8 requests at once (2 workers x 4 threads):
    # each guarded request holds one for its whole view, the rest queue.
    with (
        pgbouncer(primary, pool_mode=mode, pool_size=4) as bouncer,
        gunicorn(workers=2, database=bouncer.url(name)) as server,
    ):
        assert_exactly_once(race(server, "bounced"), url, "bounced")
    pools = bouncer.log()
    assert "FATAL" not in pools, pools[-2000:]


# A streaming replica behind a primary/replica router.


@pytest.fixture(scope="module")
def replica(primary: Cluster) -> Iterator[tuple[str, str]]:
    """(primary URL, replica URL) of the "replicated" database."""
    url = app_database(primary, "replicated")
    with streaming_replica(primary) as standby:
        standby_url = standby.url("replicated")
        assert poll(lambda: _in_recovery(standby_url), 60)
        yield url, standby_url


def _in_recovery(url: str) -> bool:
    try:
        return bool(sql(url, "SELECT pg_is_in_recovery()")[0][0])
    except psycopg.OperationalError:  # still starting
        return False


def _caught_up(primary_url: str, standby_url: str) -> Callable[[], bool]:
    lsn = sql(primary_url, "SELECT pg_current_wal_lsn()::text")[0][0]

    def done() -> bool:
        replayed = sql(
            standby_url, "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn)", lsn
        )[0][0]
        return replayed is not None and float(str(replayed)) >= 0

    return done


@pytest.fixture
def paused(replica: tuple[str, str]) -> Iterator[None]:
    """WAL replay paused on the replica: it serves reads as of now, however long."""
    primary_url, standby_url = replica
    sql(standby_url, "SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        sql(standby_url, "SELECT pg_wal_replay_resume()")
        assert poll(_caught_up(primary_url, standby_url), 60)


def replica_server(replica: tuple[str, str]) -> AbstractContextManager[Server]:
    primary_url, standby_url = replica
    return gunicorn(workers=2, database=primary_url, env={"TEST_STANDBY_URL": standby_url})


@pytest.mark.usefixtures("paused")
def test_a_lagging_replica_guarded_views_read_the_primary_and_run_once(
    replica: tuple[str, str],
) -> None:
    primary_url, _ = replica
    with replica_server(replica) as server:
        (pk,) = sql(
            primary_url, "INSERT INTO testapp_widget (name, owner) VALUES ('new', '') RETURNING id"
        )[0]
        # Unguarded reads come from the replica, which has not seen the row.
        assert server.request(f"/t/widgets/{pk}", method="GET").status == 404
        rename = json.dumps({"name": "renamed"}).encode()
        first = server.request(f"/t/widgets/{pk}/rename", rename, headers={"Idempotency-Key": "r"})
        assert first.status == 200, first.body
        assert json.loads(first.body) == {"id": pk, "name": "renamed"}
        again = server.request(f"/t/widgets/{pk}/rename", rename, headers={"Idempotency-Key": "r"})
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.body == first.body

        # Exactly once while the replica stands still: claims and replays
        # are the store's, on the primary.
        assert_exactly_once(race(server, "lagging"), primary_url, "lagging")


def _create_records(server: Server, primary_url: str, prefix: str, count: int) -> list[int]:
    """``count`` guarded requests with keys ``prefix-0``...; their records' ids, by key."""
    for n in range(count):
        reply = server.request(
            "/t/widgets",
            json.dumps({"name": f"{prefix}-{n}"}).encode(),
            headers={"Idempotency-Key": f"{prefix}-{n}"},
        )
        assert reply.status == 201
    rows = sql(
        primary_url,
        "SELECT id FROM django_idempotency_idempotencyrecord"
        f" WHERE key LIKE '{prefix}-%' ORDER BY key",
    )
    return [pk for (pk,) in rows]


def test_admin_bulk_actions_write_to_the_primary(replica: tuple[str, str]) -> None:
    primary_url, standby_url = replica
    with replica_server(replica) as server:
        pks = _create_records(server, primary_url, "admin", 3)
        assert poll(_caught_up(primary_url, standby_url), 60)  # the changelist reads the replica
        admin = AdminSession(server.base)
        changelist = "/admin/django_idempotency/idempotencyrecord/"

        page = admin.post(changelist, {"action": "expire_selected", "_selected_action": pks[:2]})
        assert "Expired 2 keys" in page, page[-3000:]
        expired = sql(
            primary_url,
            "SELECT key FROM django_idempotency_idempotencyrecord "
            "WHERE expires_at <= now() ORDER BY key",
        )
        assert [k for (k,) in expired if str(k).startswith("admin-")] == ["admin-0", "admin-1"]

        page = admin.post(
            changelist, {"action": "delete_selected", "_selected_action": pks, "post": "yes"}
        )
        assert "Successfully deleted 3" in page, page[-3000:]
        left = sql(
            primary_url,
            "SELECT count(*) FROM django_idempotency_idempotencyrecord WHERE key LIKE 'admin-%'",
        )
        assert left == [(0,)]


@pytest.mark.usefixtures("paused")
def test_admin_deletes_records_that_the_lagging_replica_has_not_seen(
    replica: tuple[str, str],
) -> None:
    primary_url, _ = replica
    with replica_server(replica) as server:
        pks = _create_records(server, primary_url, "unseen", 2)
        admin = AdminSession(server.base)
        changelist = "/admin/django_idempotency/idempotencyrecord/"
        page = admin.post(
            changelist, {"action": "delete_selected", "_selected_action": pks[:1], "post": "yes"}
        )
        assert "Successfully deleted 1" in page, page[-3000:]
        page = admin.post(f"{changelist}{pks[1]}/delete/", {"post": "yes"})
        assert "was deleted successfully" in page, page[-3000:]
        left = sql(
            primary_url,
            "SELECT count(*) FROM django_idempotency_idempotencyrecord WHERE key LIKE 'unseen-%'",
        )
        assert left == [(0,)]


class AdminSession:
    """A staff user's browser, as far as the admin's forms need one."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(base + "/admin/login/", timeout=30).read()
        page = self.post("/admin/login/?next=/admin/", {"username": "root", "password": "root-pw"})
        assert "Log out" in page or "logout" in page, page[-2000:]

    def post(self, path: str, fields: dict[str, object]) -> str:
        token = next(c.value for c in self.jar if c.name == "csrftoken")
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": token}, doseq=True)
        request = urllib.request.Request(
            self.base + path,
            data=data.encode(),
            method="POST",
            headers={"Referer": self.base + path},
        )
        with self.opener.open(request, timeout=60) as response:
            return str(response.read().decode())
