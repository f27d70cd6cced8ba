#!/usr/bin/env bash
# Debian packages the tests need, installed only if missing: quiet,
# idempotent, `apt-get update` at most once. One list for every suite:
# add a package here with the tests that need it.
set -euo pipefail
PACKAGES=(
    strace          # tests/conditions.rs: a target already traced by strace
    gdb             # tests/conditions.rs: a target already debugged by gdb
    nftables        # net: the connection lock for --tcp-established
    redis-server    # net: a real server across dump and restore
    redis-tools     # net: redis-cli
    iproute2        # ip netns, veth, tc: network, container and migration tests
    iperf3          # the migration benchmark's link throughput
    util-linux      # unshare, nsenter, flock, prlimit
    runc            # containers and the criu front
    crun
    podman
    conmon
    busybox-static  # root filesystems of the test containers
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3 with its sqlite3 module (tests/python.rs, tests/exact.rs).
if ! command -v python3 >/dev/null || ! python3 -c 'import sqlite3' 2>/dev/null; then
    missing+=(python3)
fi
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
