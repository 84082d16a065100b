# Shared by scripts/demo, scripts/test and .ci/run: the virtualenv and the servers.
# Source it; it does nothing by itself.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

# log: a line on stderr, in bold only when stderr is a terminal (no ANSI codes in
# CI logs or piped output).
log() {
    if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi
}

# pick_python: the first python3 >= 3.10 on PATH.
pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "No python3 >= 3.10 found; set PYTHON=/path/to/python3" >&2
    return 1
}

# ensure_venv GROUP...: a virtualenv with the package installed (editable) with its
# user extras (redis, openapi) and the development dependency groups GROUP... of
# pyproject.toml (PEP 735; `pip install --group` needs pip >= 25.1, so pip is
# upgraded first). Reinstalls only when pyproject.toml changed, other groups are
# asked for, or the editable install points at another checkout (a venv shared
# by work trees).
ensure_venv() {
    local groups="$*" group args=()
    local stamp="$VENV/.installed-${groups// /+}"
    for group in "$@"; do args+=(--group "$ROOT/pyproject.toml:$group"); done
    if [ ! -x "$VENV/bin/python" ]; then
        log "Creating $VENV"
        "$(pick_python)" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] \
        || [ "$(cat "$stamp")" != "$ROOT" ]; then
        log "Installing django-idempotency[redis,openapi] and the groups: $groups into $VENV"
        if ! "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=25.1" >"$VENV/pip.log" 2>&1 \
            || ! "$VENV/bin/python" -m pip install --quiet -e "$ROOT[redis,openapi]" "${args[@]}" \
                >>"$VENV/pip.log" 2>&1; then
            cat "$VENV/pip.log" >&2
            return 1
        fi
        echo "$ROOT" >"$stamp"
    fi
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_postgres: a local PostgreSQL with a role for the tests; prints its URL.
start_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        log "Installing PostgreSQL (Debian package)"
        as_root apt-get update -qq >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || return 1
    fi
    if ! port_open 5432; then
        local version
        version="$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1}')"
        [ -n "$version" ] || return 1
        log "Starting PostgreSQL $version"
        as_root pg_ctlcluster "$version" main start >&2 || return 1
        for _ in $(seq 50); do port_open 5432 && break; sleep 0.1; done
    fi
    as_root su postgres -c "psql -q -v ON_ERROR_STOP=1" >&2 <<'SQL' || return 1
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idempotency') THEN
    CREATE ROLE idempotency LOGIN CREATEDB PASSWORD 'idempotency';
  END IF;
END $$;
SQL
    echo "postgres://idempotency:idempotency@127.0.0.1:5432/${PG_DB_NAME:-idempotency}"
}

# start_redis: a local redis-server on 6379; prints its URL.
start_redis() {
    # The binaries also when a Redis already listens: tests start Redis servers,
    # Sentinels and a Cluster of their own (redis-server, redis-cli).
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        log "Installing Redis (Debian package)"
        as_root apt-get update -qq >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2 ||
            log "WARNING: could not install redis-server; the tests that start their own Redis cannot run"
    fi
    if ! port_open 6379; then
        command -v redis-server >/dev/null 2>&1 || return 1
        log "Starting redis-server"
        redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >&2 || return 1
        for _ in $(seq 50); do port_open 6379 && break; sleep 0.1; done
    fi
    echo "redis://127.0.0.1:6379/0"
}

# ensure_pgbouncer: PgBouncer (Debian package) for tests/integration/test_scale.py, which
# starts its own on a free port; the package's service is left stopped.
ensure_pgbouncer() {
    command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] && return 0
    log "Installing PgBouncer (Debian package)"
    as_root apt-get update -qq >&2 &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >&2 || return 1
}

# ensure_curl: curl, a real HTTP client that the tests drive (tests/integration/test_forms_http.py).
ensure_curl() {
    command -v curl >/dev/null 2>&1 && return 0
    log "Installing curl (Debian package)"
    as_root apt-get update -qq >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >&2
}

# ensure_mysqlclient_build: what pip needs to build mysqlclient (Django's MySQL
# and MariaDB driver, the "mysql" dependency group), which has no Linux wheel:
# pkg-config, the MariaDB client headers and a C compiler (Debian packages).
ensure_mysqlclient_build() {
    if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libmariadb 2>/dev/null &&
        command -v cc >/dev/null 2>&1; then
        return 0
    fi
    log "Installing pkg-config, libmariadb-dev and gcc (Debian packages) to build mysqlclient"
    as_root apt-get update -qq >&2 &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config libmariadb-dev gcc >&2
}

# start_mariadb: a MariaDB server of the test suite's own (Debian's
# mariadb-server package), never the system service: its own datadir, socket
# and port (MARIADB_PORT, 3307), started once and kept running; utf8mb4 with
# Debian's default collation, as most MariaDB installations. Prints its URL.
start_mariadb() {
    local port="${MARIADB_PORT:-3307}" dir="${MARIADB_DIR:-/tmp/django-idempotency-mariadb-${MARIADB_PORT:-3307}}"
    local user
    user="$(id -un)"
    if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
        log "Installing MariaDB (Debian package)"
        as_root apt-get update -qq >&2 &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >&2 || return 1
    fi
    local mariadbd
    mariadbd="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
    if ! port_open "$port"; then
        if [ ! -d "$dir/data/mysql" ]; then
            log "Creating a MariaDB data directory in $dir"
            mkdir -p "$dir"
            mariadb-install-db --no-defaults --datadir="$dir/data" --user="$user" \
                --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 ||
                { cat "$dir/install.log" >&2; return 1; }
        fi
        log "Starting MariaDB on port $port"
        nohup "$mariadbd" --no-defaults --user="$user" --datadir="$dir/data" \
            --port="$port" --bind-address=127.0.0.1 --socket="$dir/mariadb.sock" \
            --pid-file="$dir/mariadb.pid" --log-error="$dir/error.log" \
            --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
            --innodb-buffer-pool-size=128M --max-connections=300 --skip-name-resolve \
            >/dev/null 2>&1 &
        for _ in $(seq 100); do port_open "$port" && break; sleep 0.2; done
        port_open "$port" || { tail -20 "$dir/error.log" >&2; return 1; }
    fi
    mariadb --no-defaults --protocol=socket --socket="$dir/mariadb.sock" -uroot >&2 <<'SQL' || return 1
CREATE USER IF NOT EXISTS 'idempotency'@'127.0.0.1' IDENTIFIED BY 'idempotency';
GRANT ALL PRIVILEGES ON *.* TO 'idempotency'@'127.0.0.1';
SQL
    echo "mysql://idempotency:idempotency@127.0.0.1:$port/${MARIADB_DB_NAME:-idempotency}"
}
