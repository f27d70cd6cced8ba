#!/usr/bin/env bash
# Debian packages the tests need. Idempotent: installs only what is missing,
# and runs `apt-get update` at most once. Add packages to the list below.
set -euo pipefail
PACKAGES=(
    # issue 15: container runtimes driving crest through its criu front
    runc
    crun
    podman
    conmon
    busybox-static
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
