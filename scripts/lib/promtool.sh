# shellcheck shell=bash
# Used by scripts/test: promtool, which checks and unit-tests deploy/prometheus's rules.
#
# ensure_promtool finds promtool (PROMTOOL from the environment, or on PATH) and exports its
# path as PROMTOOL, so tests can use it too. When there is none it installs Debian's
# `prometheus` package, which needs root, as the Postgres install does. That package comes
# with a Prometheus server, and its postinst starts it where an init system lets it; a server
# the install started is stopped (and its service disabled) again, so only the tool is left.

if ! declare -F log >/dev/null; then
    log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
fi

# The pids of the processes named prometheus (pgrep is not in every image).
prometheus_pids() {
    if command -v pgrep >/dev/null 2>&1; then
        pgrep -x prometheus || true
    else
        local comm
        for comm in /proc/[0-9]*/comm; do
            if [ "$(cat "$comm" 2>/dev/null)" = prometheus ]; then
                comm=${comm#/proc/}; printf '%s\n' "${comm%/comm}"
            fi
        done
    fi
}

# stop_new_prometheus PIDS: stops the Prometheus servers running now that are not in PIDS
# (the ones that ran before the install).
stop_new_prometheus() {
    local before=$1 pid new="" left="" tries=0
    for pid in $(prometheus_pids); do
        if ! printf '%s\n' "$before" | grep -qx "$pid"; then new="$new $pid"; fi
    done
    [ -n "$new" ] || return 0
    log "the prometheus package started a Prometheus server (pid$new); stopping it"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    for pid in $new; do
        kill "$pid" 2>/dev/null || true
    done
    while [ "$tries" -lt 50 ]; do
        left=""
        for pid in $new; do
            if kill -0 "$pid" 2>/dev/null; then left="$left $pid"; fi
        done
        [ -n "$left" ] || return 0
        sleep 0.2
        tries=$((tries + 1))
    done
    log "Prometheus server (pid$left) did not stop"
    exit 1
}

ensure_promtool() {
    if [ -z "${PROMTOOL:-}" ]; then
        PROMTOOL=$(command -v promtool || true)
    fi
    if [ -z "$PROMTOOL" ]; then
        log "promtool not found; installing Debian's prometheus"
        if [ "$(id -u)" -ne 0 ]; then
            log "need root to install prometheus (or put promtool on PATH, or set PROMTOOL)"; exit 1
        fi
        local before
        before=$(prometheus_pids)
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
        stop_new_prometheus "$before"
        PROMTOOL=$(command -v promtool || true)
        [ -n "$PROMTOOL" ] || { log "prometheus installed but promtool not found"; exit 1; }
    fi
    [ -x "$PROMTOOL" ] || { log "PROMTOOL=$PROMTOOL is not an executable"; exit 1; }
    export PROMTOOL
    log "using $("$PROMTOOL" --version 2>&1 | sed -n 1p) ($PROMTOOL)"
}
