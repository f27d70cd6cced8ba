#!/usr/bin/env bash
# Debian packages the tests need, installed only if missing (quiet and
# idempotent; apt-get update once, only when something must be installed).
# Other test suites add their packages to NEEDED.
set -euo pipefail
NEEDED=(
    strace # tests/conditions.rs: a target already traced by strace
    gdb    # tests/conditions.rs: a target already debugged by gdb
)
missing=()
for p in "${NEEDED[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
