//! Pseudo-terminals: a tree holding both sides of a pty pair, with the
//! slave as a session's controlling terminal and a foreground group.

mod common;
use common::*;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A restored pty keeps its number (`/dev/pts/N`), and the tests of this
/// file run in parallel: one test's new pty could take the number
/// another's restore needs.  Each test holds this while it runs.
static PTYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pty_lock() -> std::sync::MutexGuard<'static, ()> {
    PTYS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn pty_pair_in_the_tree() {
    let _ptys = pty_lock();
    Workload::start("pty", &[]).cycle();
}

#[test]
fn pty_pair_twice() {
    let _ptys = pty_lock();
    // A restored pair (new number, new controlling terminal) can be
    // checkpointed again.
    Workload::start("pty", &[]).cycle_twice();
}

/// Bytes the slave wrote and the master has not read come back.
#[test]
fn pty_with_unread_data() {
    let _ptys = pty_lock();
    Workload::start("pty", &["unread"]).cycle();
}

/// `check` and a dump that leaves the tree running read those bytes out
/// and give them back: the program still reads them, in order.
#[test]
fn pty_unread_data_stays_in_place_for_check_and_leave_running() {
    let _ptys = pty_lock();
    let w = Workload::start("pty", &["unread"]);
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(o.status.success(), "check: {}", stderr(&o));
    let o = w.dump(&["--leave-running"]);
    assert!(o.status.success(), "dump: {}", stderr(&o));
    assert!(alive(w.pid));
    w.go();
    w.expect_pass();
}

/// A pty slave whose master this test holds: the tree's terminal is
/// outside the tree.
#[test]
fn pty_with_master_outside_is_refused() {
    let _ptys = pty_lock();
    init();
    // SAFETY: plain calls; the buffer is valid for its length.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0 && libc::grantpt(m) == 0 && libc::unlockpt(m) == 0);
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
        let s = libc::open(
            buf.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(s >= 0);
        (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s))
    };
    let dir = temp_dir("pty-outside");
    let mut child = Command::new(workload_bin())
        .arg("idle")
        .arg(&dir)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("starting the workload");
    let pid = child.id() as i32;
    let start = Instant::now();
    while !dir.join("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "workload not ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let img = dir.join("img");
    let o = crest(&["dump", "-p", &pid.to_string(), "-o", img.to_str().unwrap()]);
    assert!(!o.status.success(), "the dump must be refused");
    let err = stderr(&o);
    assert!(
        err.contains("fd 0") && err.contains("its master is held outside the tree"),
        "unexpected refusal: {err}"
    );
    assert!(alive(pid), "the process must keep running");
    assert!(!img.exists(), "no image may be left");
    std::fs::write(dir.join("go"), b"go\n").unwrap();
    let st = child.wait().unwrap();
    let result = std::fs::read_to_string(dir.join("result")).unwrap_or_default();
    assert!(
        st.success() && result.starts_with("PASS"),
        "{st:?}: {result}"
    );
    drop(master);
    let _ = std::fs::remove_dir_all(&dir);
}
