#!/usr/bin/env bash
# Builds crest and the migration benchmark (release) and runs it, passing
# its arguments through. Run as root:
#   benches/migrate.sh                                  # 1 and 10 Gbit/s, 256 and 1024 MiB, idle and busy
#   benches/migrate.sh --sizes 256 --links 10 --modes idle
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/install-deps.sh
cargo build --release -q -p crest-cli -p crest-bench
target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/release/crest-bench-migrate" "$@"
