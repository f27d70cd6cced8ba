#!/usr/bin/env bash
# Debian packages the tests need, installed only where missing (idempotent;
# `apt-get update` at most once).  Keep this a simple list.
set -euo pipefail
PACKAGES=(
    util-linux      # unshare, nsenter: namespace tests
    busybox-static  # the busybox container test
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
