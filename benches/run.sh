#!/usr/bin/env bash
# Builds crest and the benchmark (release) and runs the benchmark, passing
# its arguments through. Run as root from anywhere:
#   benches/run.sh                  # full run: tables on stdout, JSON in target/bench.json
#   benches/run.sh --smoke          # quick check that it works (what CI runs)
#   benches/run.sh --sizes 1,256 --only mem --json-out /tmp/b.json
#   benches/run.sh --sizes 1024 --only mem --modes plain,leave-running --sinks file
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p crest-cli -p crest-bench
target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/release/crest-bench" "$@"
