//! Task state (issue 16): job-control stops with their signals and whether
//! the parent collected them, zombies in groups and sessions not their
//! parent's, every thread's name, oom_score_adj, the audit login uid, and
//! cgroup membership.  Each workload checks itself after the restore.

mod common;
use common::*;

#[test]
fn stops_zombies_names_and_scores() {
    Workload::start("task-state", &[]).cycle();
}
