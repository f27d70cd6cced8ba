//! seccomp filters (issue 16): per-thread filters, one shared by TSYNC,
//! one with SECCOMP_FILTER_FLAG_LOG, come back and filter the same calls;
//! strict mode is refused with the process left running.

mod common;
use common::*;

#[test]
fn filters_per_thread_and_shared() {
    Workload::start("seccomp", &[]).cycle();
}

/// Filters that fail the very calls crest injects (prctl, getitimer,
/// sigaltstack, rt_sigaction) do not disturb the dump or the restore:
/// crest suspends them for its own calls.
#[test]
fn filters_that_refuse_crests_calls() {
    Workload::start("seccomp", &["hostile"]).cycle();
}
