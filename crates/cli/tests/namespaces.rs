//! Namespaces: trees that live in PID, UTS and IPC namespaces of their
//! own are checkpointed and restored into new ones; each process checks
//! its own PIDs, names and IPC objects afterwards.

mod common;
use common::*;

/// A container init (PID 1 of its own PID, UTS and IPC namespaces) with
/// three descendants and a thread: dumped, restored twice in a row.
#[test]
fn pid_uts_ipc_namespaces() {
    let mut w = Workload::start_handover("pidns", &[]);
    for _ in 0..2 {
        w.dump_ok();
        w.restore_moved(&[]);
    }
    w.go();
    w.expect_pass();
}

/// A PID namespace inside the container's PID namespace.
#[test]
fn nested_pid_namespaces() {
    let mut w = Workload::start_handover("pidns", &["nested"]);
    w.dump_ok();
    w.restore_moved(&[]);
    w.go();
    w.expect_pass();
}

/// The checker sees a wrong host name: changed from outside before go,
/// the container must fail its own check.
#[test]
fn pidns_checker_detects_a_wrong_hostname() {
    let w = Workload::start_handover("pidns", &[]);
    let ns = format!("/proc/{}/ns/uts", w.pid);
    let f = std::fs::File::open(&ns).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this helper thread only; sethostname with a
            // valid buffer.
            unsafe {
                assert_eq!(libc::setns(f.as_raw_fd(), libc::CLONE_NEWUTS), 0);
                assert_eq!(libc::sethostname(b"wrong".as_ptr().cast(), 5), 0);
            }
        });
    });
    w.go();
    let res = w.dir.join("result");
    let start = std::time::Instant::now();
    while !res.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(
        text.starts_with("FAIL") && text.contains("hostname"),
        "{text}"
    );
}

/// A process in a mount namespace of its own is refused by check and
/// dump, named, and keeps running.
#[test]
fn other_mount_namespace_is_refused() {
    init();
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = std::time::Instant::now();
    loop {
        let mine = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
        if mine != theirs || start.elapsed().as_secs() > 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let o = crest(&["check", "-p", &pid.to_string()]);
    let text = stdout(&o) + &stderr(&o);
    assert!(text.contains("mnt namespace"), "{text}");
    assert!(alive(pid));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Starts `sleep` with PID `pid` (that of the tree just dumped), so that
/// a plain restore cannot have it.
fn occupy(pid: i32) {
    let prog = std::ffi::CString::new("/bin/sleep").unwrap();
    let arg = std::ffi::CString::new("60").unwrap();
    let argv = [prog.as_ptr(), arg.as_ptr(), std::ptr::null()];
    // SAFETY: the child only calls execv and _exit (async-signal-safe) on
    // data prepared before the fork.
    match unsafe { crest_sys::process::clone_with_pid(pid, 0) }.expect("clone3 set_tid") {
        // SAFETY: as above.
        crest_sys::process::Forked::Child => unsafe {
            libc::execv(prog.as_ptr(), argv.as_ptr());
            libc::_exit(127)
        },
        crest_sys::process::Forked::Parent(_) => {}
    }
}

/// `restore --new-pidns`: the tree's PIDs are taken here, so it is
/// restored into a new PID namespace where every process (and thread)
/// keeps its PID.
#[test]
fn new_pidns_when_the_pids_are_taken() {
    let mut w = Workload::start("threads", &["4"]);
    let old = w.pid;
    w.dump_ok();
    occupy(old);
    assert!(alive(old), "pid {old} is taken again");
    w.restore_moved(&["--new-pidns"]);
    assert_ne!(w.pid, old, "the init crest made has a pid of its own");
    w.go();
    w.expect_pass();
    // SAFETY: plain kill of the placeholder this test started.
    unsafe { libc::kill(old, libc::SIGKILL) };
    reap(old, std::time::Duration::from_secs(5));
}
