//! Time namespaces: a process whose CLOCK_MONOTONIC and CLOCK_BOOTTIME
//! are offset (made by util-linux `unshare --time`) is dumped, the image
//! waits, and the restored process's clocks go on from where they were:
//! the workload checks that no step between two readings 20 ms apart was
//! long, and that the clocks are still offset.

mod common;
use common::*;
use std::time::Duration;

const MONO: i64 = 1_000_000;
const BOOT: i64 = 2_000_000;

fn wrapper() -> Vec<String> {
    [
        "unshare",
        "--time",
        "--monotonic",
        &MONO.to_string(),
        "--boottime",
        &BOOT.to_string(),
        "--fork",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start() -> Workload {
    let w = wrapper();
    let w: Vec<&str> = w.iter().map(|s| s.as_str()).collect();
    Workload::start_wrapped("timens", &w, &["900000"], "ready")
}

/// (monotonic, boottime) offsets in whole seconds of `pid`'s namespace.
fn offsets(pid: i32) -> (i64, i64) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/timens_offsets")).unwrap();
    let get = |name: &str| -> i64 {
        let l = t.lines().find(|l| l.starts_with(name)).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (get("monotonic"), get("boottime"))
}

/// Dumped, left in the image for 3 s, restored: the container's clocks
/// continue (the new offsets are 3 s smaller than the old ones), twice.
#[test]
fn clocks_continue_across_a_restore() {
    let mut w = start();
    assert_eq!(offsets(w.pid), (MONO, BOOT));
    let o = crest(&["check", "-p", &w.pid.to_string()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let mut before = (MONO, BOOT);
    for _ in 0..2 {
        let o = w.dump(&[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let start = std::time::Instant::now();
        // Gone and reaped (by unshare, or as our zombie once restored).
        let proc_dir = format!("/proc/{}", w.pid);
        while std::path::Path::new(&proc_dir).exists() && start.elapsed().as_secs() < 10 {
            reap_all();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!alive(w.pid), "the dumped process is still there");
        std::thread::sleep(Duration::from_secs(3));
        w.restore_moved(&[]);
        let after = offsets(w.pid);
        // The downtime (3 s and more) is taken off the offsets.
        assert!(
            after.0 <= before.0 - 3 && after.0 > before.0 - 30,
            "monotonic offset {before:?} -> {after:?}"
        );
        assert!(
            after.1 <= before.1 - 3 && after.1 > before.1 - 30,
            "boottime offset {before:?} -> {after:?}"
        );
        before = after;
    }
    w.go();
    w.expect_pass();
}

/// The checker sees a jump: the process is stopped for 3 s (its clocks
/// run on meanwhile), so it must fail its own check.
#[test]
fn timens_checker_detects_a_jump() {
    let w = start();
    // SAFETY: plain kills of the workload this test started.
    unsafe { libc::kill(w.pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: as above.
    unsafe { libc::kill(w.pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(100));
    w.go();
    let res = w.dir.join("result");
    let start = std::time::Instant::now();
    while !res.exists() && start.elapsed().as_secs() < 30 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&res).unwrap_or_default();
    assert!(
        text.starts_with("FAIL") && text.contains("CLOCK_MONOTONIC jumped"),
        "{text}"
    );
}

/// A process that unshared a time namespace for its children without
/// entering it is refused by check, the namespace named.
#[test]
fn unentered_time_namespace_is_refused() {
    init();
    // (util-linux unshare enters the namespace it makes.)
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import ctypes, time; ctypes.CDLL(None).unshare(0x80); time.sleep(100)",
        ])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = std::time::Instant::now();
    let link = |k: &str| std::fs::read_link(format!("/proc/{pid}/ns/{k}")).ok();
    while start.elapsed().as_secs() < 10 && link("time") == link("time_for_children") {
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = crest(&["check", "-p", &pid.to_string()]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(!o.status.success(), "check accepted it");
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(text.contains("time namespace"), "{text}");
}
