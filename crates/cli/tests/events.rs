//! Event descriptors (eventfd, timerfd, signalfd, inotify, epoll) and
//! POSIX timers, dumped and restored through the `crest` binary: each
//! workload checks its own state and behaviour after the restore.

mod common;
use common::*;

#[test]
fn event_descriptors() {
    Workload::start("events", &[]).cycle();
}

#[test]
fn event_descriptors_twice() {
    // A restored process's event descriptors can be checkpointed again
    // (no leftover events from the restore, same watch numbers).
    Workload::start("events", &[]).cycle_twice();
}

#[test]
fn event_descriptors_leave_running_and_inspect() {
    Workload::start("events", &[]).leave_running_and_inspect(&[
        "eventfd (count 4886718345)",
        "eventfd (count 3, semaphore)",
        "timerfd (clock 1",
        "absolute",
        "signalfd (mask",
        "inotify (1:",
        "epoll (",
        "data 0xdeadbeef12345678",
    ]);
}

#[test]
fn inotify_with_queued_events_is_refused() {
    let w = Workload::start("events", &["queued-inotify"]);
    let o = w.dump(&[]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains("inotify has") && err.contains("queued"),
        "unexpected refusal: {err}"
    );
    assert!(alive(w.pid), "the process must keep running");
    assert!(!w.image().exists(), "no image may be left");
    w.go();
    w.expect_pass();
}

#[test]
fn posix_timers() {
    Workload::start("posix-timers", &[]).cycle();
}

#[test]
fn posix_timers_twice() {
    Workload::start("posix-timers", &[]).cycle_twice();
}
