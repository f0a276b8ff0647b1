#!/usr/bin/env bash
# Runs the whole test suite. The integration tests start their own redis-server processes on
# free loopback ports (single servers, a six-node Redis Cluster, a Sentinel setup), so
# redis-server and redis-cli must be installed: this script installs it from
# Debian's packages when it is missing and apt-get is available, and otherwise says how.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v "${LAYERCACHE_REDIS_SERVER:-redis-server}" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
        echo "redis-server is missing: installing it with apt-get" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
        # The package starts a system service on 6379; the tests do not need it.
        if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop redis-server >/dev/null 2>&1 || true; fi
    else
        echo "redis-server is not installed. Install it (Debian/Ubuntu: apt-get install -y redis-server;" >&2
        echo "macOS: brew install redis), or set LAYERCACHE_REDIS_SERVER to its path, then run again." >&2
        exit 1
    fi
fi

# The cluster tests join nodes with redis-cli (Debian ships it in redis-tools, which
# redis-server depends on; installed alone otherwise).
if ! command -v "${LAYERCACHE_REDIS_CLI:-redis-cli}" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "redis-cli is missing: installing redis-tools with apt-get" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-tools >/dev/null
fi

"${LAYERCACHE_REDIS_SERVER:-redis-server}" --version
"${LAYERCACHE_REDIS_CLI:-redis-cli}" --version
cargo test --workspace --all-features "$@"
