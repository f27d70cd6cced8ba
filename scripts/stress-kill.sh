#!/usr/bin/env bash
# The long random-kill test (as root): crest SIGKILLed at uniform random
# instants of 230 dumps (register workloads, a 50-process tree, a 1 GiB
# process) and 200 restores (50 processes, files, 1 GiB), each checked for
# harm.  Prints the counts (the whole output goes to $LOG); exit status 0
# only if nothing was harmed.  CREST_KILL_SEED=N replays a run,
# CREST_KILL_ONLY=SCENARIO narrows it to one workload.
set -euo pipefail
cd "$(dirname "$0")/.."
export CREST_STRESS_KILLS=1
LOG=${LOG:-${TMPDIR:-/tmp}/crest-stress-kill.log}
set +e
cargo test -p crest-cli --test random_kill -- --nocapture --test-threads=1 >"$LOG" 2>&1
rc=$?
set -e
grep -E 'random_kill:|test result' "$LOG"
[ "$rc" -eq 0 ] || echo "failed: see $LOG"
exit "$rc"
