//! Transparent huge pages: anonymous memory backed by THP before the
//! dump is backed by THP after the restore (the `thp` workload compares
//! its AnonHugePages before and after, and checks every word).

mod common;
use common::*;
use std::time::Duration;

#[test]
fn thp_backing_kept() {
    Workload::start("thp", &["64"]).cycle();
}

/// The same through a --leave-running dump of a process that goes on.
#[test]
fn thp_backing_kept_leave_running() {
    let w = Workload::start("thp", &["64"]);
    let o = w.dump(&["--leave-running", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // SAFETY: plain kill of a pid this test started.
    unsafe { libc::kill(w.pid, libc::SIGKILL) };
    reap(w.pid, Duration::from_secs(10));
    w.restore_ok();
    w.go();
    w.expect_pass();
}

/// Negative selftest: with the huge pages split after the restore (as a
/// restore that lost them would leave them), the workload fails.
#[test]
fn thp_lost_is_caught() {
    let w = Workload::start_env("thp", &["64"], &[("CREST_WL_DISTURB", "split")]);
    w.dump_ok();
    w.restore_ok();
    w.go();
    let res = w.dir.join("result");
    let t = std::time::Instant::now();
    while !res.exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    reap(w.pid, Duration::from_secs(30));
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(
        text.starts_with("FAIL") && text.contains("AnonHugePages"),
        "the workload did not notice the lost huge pages:\n{text}"
    );
}
