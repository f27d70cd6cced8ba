#!/usr/bin/env bash
# The long random-kill test (as root): crest SIGKILLed at uniform random
# instants of >= 250 dumps (register workloads, a 1 GiB process, a
# 50-process tree) and >= 200 restores (1 GiB, 50 processes, files), each
# checked for harm.  Prints the counts; exit status 0 only if nothing was
# harmed.  CREST_KILL_SEED=N replays a run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CREST_STRESS_KILLS=1
cargo test -p crest-cli --test random_kill -- --nocapture --test-threads=1 2>&1 |
    grep --line-buffered -E 'random_kill:|harmed|test result|panicked'
exit "${PIPESTATUS[0]}"
