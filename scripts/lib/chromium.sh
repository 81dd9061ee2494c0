# shellcheck shell=bash
# The console's browser tests drive headless Chromium through chromedriver (WebDriver). When
# either is missing, Debian's chromium and chromium-driver are installed (as root). CHROMIUM
# and CHROMEDRIVER are exported for the tests.

ensure_chromium() {
    CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
    CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver || true)}
    if [ -z "$CHROMIUM" ] || [ -z "$CHROMEDRIVER" ]; then
        log "chromium or chromedriver not found; installing Debian's chromium and chromium-driver"
        if [ "$(id -u)" -ne 0 ]; then
            log "need root to install chromium (or set CHROMIUM and CHROMEDRIVER)"; exit 1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
        CHROMIUM=$(command -v chromium || true)
        CHROMEDRIVER=$(command -v chromedriver || true)
        if [ -z "$CHROMIUM" ] || [ -z "$CHROMEDRIVER" ]; then
            log "chromium installed but chromium or chromedriver not found"; exit 1
        fi
    fi
    export CHROMIUM CHROMEDRIVER
}
