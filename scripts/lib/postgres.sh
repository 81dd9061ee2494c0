# Shared by scripts/test and scripts/bench: a throwaway Postgres cluster for this run.
#
# start_postgres [extra server options...] starts a fresh cluster in a temporary folder,
# listening only on a unix socket there, exports DATABASE_URL, and registers its removal on
# exit (also on failure or Ctrl-C). Postgres's binaries come from /usr/lib/postgresql/*/bin;
# Debian's `postgresql` package is installed when they are missing. initdb refuses to run as
# root, so as root the cluster runs as the `postgres` user.

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

pg_tmp=""
pg_bin=""
cleanup_postgres() {
    local status=$?
    if [ -n "$pg_tmp" ] && [ -d "$pg_tmp" ]; then
        if [ -f "$pg_tmp/data/postmaster.pid" ]; then
            as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        rm -rf "$pg_tmp"
    fi
    exit "$status"
}

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

find_pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then printf '%s\n' "$dir"; fi
}

start_postgres() {
    trap cleanup_postgres EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    pg_bin=$(find_pg_bin)
    if [ -z "$pg_bin" ]; then
        log "no Postgres server binaries found; installing Debian's postgresql"
        if [ "$(id -u)" -ne 0 ]; then
            log "need root to install postgresql (or set DATABASE_URL)"; exit 1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        pg_bin=$(find_pg_bin)
        [ -n "$pg_bin" ] || { log "postgresql installed but initdb not found"; exit 1; }
    fi
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    pg_tmp=$(mktemp -d "${TMPDIR:-/tmp}/pipeline-control-pg.XXXXXX")
    chmod 755 "$pg_tmp"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pg_tmp"; fi
    as_pg "$pg_bin/initdb" -D "$pg_tmp/data" -U postgres -A trust --no-sync -E UTF8 >"$pg_tmp/initdb.log" 2>&1 \
        || { cat "$pg_tmp/initdb.log" >&2; exit 1; }
    # Only a unix socket: no TCP port to collide on.
    as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" -l "$pg_tmp/postgres.log" -w -t 60 \
        -o "-c listen_addresses='' -k $pg_tmp -c max_connections=300 $*" \
        start >/dev/null || { cat "$pg_tmp/postgres.log" >&2; exit 1; }
    export DATABASE_URL="postgres://postgres@localhost/postgres?host=$pg_tmp"
    log "started a throwaway Postgres ($("$pg_bin/postgres" --version)) in $pg_tmp"
}
