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

/// A process in strict mode (only read, write, exit and sigreturn) would
/// be killed by the first call crest injected: dump refuses it, with and
/// without pre-copy (which injects calls into the running tree), and
/// check names it; the process runs on, still in strict mode.
#[test]
fn strict_mode_is_refused_with_the_process_left_running() {
    const SCRIPT: &str = r#"
import ctypes, os, sys
d = sys.argv[1]
r, w = os.pipe()
libc = ctypes.CDLL(None)
open(d + "/ready.tmp", "w").write(str(os.getpid()))
os.rename(d + "/ready.tmp", d + "/ready")
libc.prctl(22, 1, 0, 0, 0)  # PR_SET_SECCOMP, SECCOMP_MODE_STRICT
os.read(r, 1)
"#;
    let w = Workload::start_python("seccomp-strict", SCRIPT);
    let status = || std::fs::read_to_string(format!("/proc/{}/status", w.pid)).unwrap_or_default();
    let strict = || status().lines().any(|l| l == "Seccomp:\t1");
    let t0 = std::time::Instant::now();
    while !strict() {
        assert!(alive(w.pid), "the workload died entering strict mode");
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for extra in [&[][..], &["--leave-running"][..]] {
        let o = w.dump(extra);
        assert!(!o.status.success(), "dump {extra:?} accepted it");
        assert!(
            stderr(&o).contains("strict-mode seccomp"),
            "dump {extra:?}: {}",
            stderr(&o)
        );
        assert!(alive(w.pid) && strict(), "dump {extra:?} harmed it");
        assert!(!w.image().exists());
    }
    let pid = w.pid.to_string();
    let o = crest(&["check", "-p", &pid]);
    assert!(!o.status.success());
    assert!(
        format!("{}{}", stdout(&o), stderr(&o)).contains("strict-mode seccomp"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(alive(w.pid) && strict(), "check harmed it");
    assert!(status().contains("State:\tS"), "{}", status());
}
