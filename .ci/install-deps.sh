#!/usr/bin/env bash
# Debian packages the tests and benchmarks need. Idempotent: installs only
# what is missing, with one apt-get update. Keep this a simple list.
set -euo pipefail
packages=(
    iproute2    # ip netns, veth, tc: the migration tests and benchmark
    iperf3      # the migration benchmark's link throughput
    util-linux  # nsenter, unshare
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
