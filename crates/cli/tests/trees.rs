//! Process trees, threads and what processes share: each workload checks
//! its own state (and every member's) after the restore.

mod common;
use common::*;

#[test]
fn threads_8() {
    Workload::start("threads", &["8"]).cycle();
}

#[test]
fn threads_200() {
    Workload::start("threads", &["200"]).cycle();
}

#[test]
fn tree_with_groups_and_sessions() {
    Workload::start("tree", &[]).cycle();
}

#[test]
fn tree_with_a_sibling_process_group() {
    Workload::start("tree", &["sibling-pgrp"]).cycle();
}

#[test]
fn shared_file_descriptions() {
    Workload::start("shared-fd", &[]).cycle();
}

#[test]
fn pipes_with_data_in_flight() {
    Workload::start("pipes", &[]).cycle();
}

#[test]
fn tree_leave_running() {
    let w = Workload::start("tree", &[]);
    let o = w.dump(&["--leave-running"]);
    assert!(o.status.success(), "{}", stderr(&o));
    w.go();
    w.expect_pass();
}

/// The scale scenario: 50 processes with 3 threads each (150 threads in
/// all), 2 MiB each, dumped and restored ten times in a row.
#[test]
fn fifty_processes_ten_cycles() {
    let w = Workload::start("many", &["50", "3", "2"]);
    for _ in 0..10 {
        w.dump_ok();
        w.restore_ok();
    }
    w.go();
    w.expect_pass();
}
