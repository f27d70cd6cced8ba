#!/usr/bin/env bash
# Debian packages the tests need.  Idempotent: installs only what is missing.
set -euo pipefail
PACKAGES=(
  nftables
  redis-server
  redis-tools
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
