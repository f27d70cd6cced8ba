//! Conditions a user's system produces during a dump or restore: a second
//! crest, a debugger or tracer already attached, signals arriving, someone
//! stopping and continuing the target, crest running out of memory,
//! SIGINT/SIGTERM to crest.  Each time the target must run on as it was
//! (and check itself after go), and crest must say what happened.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status_field(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn tracer(pid: i32) -> i32 {
    status_field(pid, "TracerPid")
        .and_then(|t| t.parse().ok())
        .unwrap_or(-1)
}

fn state(pid: i32) -> char {
    status_field(pid, "State")
        .and_then(|s| s.chars().next())
        .unwrap_or('?')
}

fn wait_until(what: &str, timeout: Duration, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Not stopped, not traced, and the same maps and masks as `before`.
fn intact(pid: i32, before: &(String, String)) {
    wait_until(
        "the target to be untraced and running",
        Duration::from_secs(5),
        || tracer(pid) == 0 && !matches!(state(pid), 'T' | 't' | 'Z' | 'X' | '?'),
    );
    assert_eq!(&snap(pid), before, "pid {pid}: maps or SigBlk changed");
}

fn snap(pid: i32) -> (String, String) {
    (
        std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(),
        status_field(pid, "SigBlk").unwrap(),
    )
}

fn dump_args(w: &Workload, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["dump", "-p", &w.pid.to_string(), "-o"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(w.image().display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn spawn_crest(args: &[String]) -> std::process::Child {
    Command::new(crest_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting crest")
}

/// Whether some crest holds the dump lock of `pid` (abstract sockets
/// are listed in /proc/net/unix).
fn dump_lock_held(pid: i32) -> bool {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .contains(&format!("@crest-dump/{pid}/"))
}

#[test]
fn two_dumps_of_one_tree_at_once() {
    let w = Workload::start("many", &["50", "1", "1"]);
    let first = spawn_crest(&dump_args(&w, &["--leave-running"]));
    let first_pid = first.id() as i32;
    wait_until("the first dump to start", Duration::from_secs(10), || {
        dump_lock_held(w.pid)
    });
    let second = Command::new(crest_bin())
        .args(dump_args(&w, &["--leave-running"]))
        .arg("-q")
        .output()
        .unwrap();
    let err = stderr(&second);
    assert!(!second.status.success(), "the second dump succeeded");
    assert!(
        err.contains("being checkpointed by another crest")
            && err.contains(&format!("pid {first_pid}")),
        "the second dump does not name the first (pid {first_pid}): {err}"
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "first dump: {}", stderr(&first));
    let o = crest(&["inspect", w.image().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    w.go();
    w.expect_pass();
}

/// `strace` attached to the target: crest refuses naming it, and strace
/// goes on tracing.
#[test]
fn target_traced_by_strace() {
    let w = Workload::start("idle", &[]);
    let out = w.dir.join("strace.out");
    let mut strace = Command::new("strace")
        .args(["-o", out.to_str().unwrap(), "-p", &w.pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (run .ci/install-deps.sh)");
    let spid = strace.id() as i32;
    wait_until("strace to attach", Duration::from_secs(10), || {
        tracer(w.pid) == spid
    });
    let o = w.dump(&[]);
    let err = stderr(&o);
    assert!(!o.status.success(), "a dump of a traced process succeeded");
    assert!(
        err.contains(&format!("traced by pid {spid}, strace")),
        "the refusal does not name strace: {err}"
    );
    assert!(!w.image().exists());
    assert_eq!(tracer(w.pid), spid, "strace lost its tracee");
    // strace still sees the workload's polling syscalls.
    let len = || std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let before = len();
    wait_until(
        "strace to record more syscalls",
        Duration::from_secs(10),
        || len() > before,
    );
    // SAFETY: SIGINT makes strace detach; it is our child.
    unsafe { libc::kill(spid, libc::SIGINT) };
    // strace detaches and ends with the signal's status.
    use std::os::unix::process::ExitStatusExt;
    let st = strace.wait().unwrap();
    assert!(
        st.success() || st.signal() == Some(libc::SIGINT) || st.code() == Some(130),
        "strace failed: {st:?}"
    );
    wait_until("strace to detach", Duration::from_secs(10), || {
        tracer(w.pid) == 0
    });
    w.go();
    w.expect_pass();
}

/// gdb attached (the target in its tracing stop): crest refuses naming
/// gdb and leaves the target stopped for gdb, which detaches normally.
#[test]
fn target_traced_by_gdb() {
    let w = Workload::start("idle", &[]);
    let gdb = Command::new("gdb")
        .args(["-q", "-nx", "-batch", "-p", &w.pid.to_string()])
        .args(["-ex", "shell sleep 4", "-ex", "info registers rip"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb (run .ci/install-deps.sh)");
    let gpid = gdb.id() as i32;
    wait_until("gdb to attach", Duration::from_secs(20), || {
        tracer(w.pid) == gpid && state(w.pid) == 't'
    });
    let o = w.dump(&["--leave-running"]);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "a dump of a debugged process succeeded"
    );
    assert!(
        err.contains(&format!("traced by pid {gpid}, gdb")),
        "the refusal does not name gdb: {err}"
    );
    assert_eq!(tracer(w.pid), gpid, "gdb lost its inferior");
    assert_eq!(state(w.pid), 't', "the debugged process was let go");
    let out = gdb.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("rip"),
        "gdb's session was disturbed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("gdb to detach", Duration::from_secs(10), || {
        tracer(w.pid) == 0
    });
    w.go();
    w.expect_pass();
}

fn pending(pid: i32, sig: i32) -> bool {
    let bit = 1u64 << (sig - 1);
    ["SigPnd", "ShdPnd"].iter().any(|f| {
        status_field(pid, f)
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .is_some_and(|m| m & bit != 0)
    })
}

/// Sends SIGUSR1 (one at a time: never while one is pending) and numbered
/// SIGRTMIN to `pid` until `stop`; returns how many of each went out.
fn send_signals(pid: i32, stop: &std::sync::atomic::AtomicBool) -> (u64, u64) {
    let (mut usr1, mut rt) = (0u64, 0u64);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if !pending(pid, libc::SIGUSR1) {
            // SAFETY: plain kill of the test's workload.
            if unsafe { libc::kill(pid, libc::SIGUSR1) } == 0 {
                usr1 += 1;
            }
        }
        let v = libc::sigval {
            sival_ptr: rt as usize as *mut libc::c_void,
        };
        // SAFETY: plain sigqueue of the test's workload.
        if unsafe { libc::sigqueue(pid, libc::SIGRTMIN(), v) } == 0 {
            rt += 1;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    (usr1, rt)
}

/// Signals sent throughout ten dumps: all delivered after, exactly once,
/// in order.
#[test]
fn signals_during_dumps() {
    let w = Workload::start("sigcount", &[]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let pid = w.pid;
    let (usr1, rt) = std::thread::scope(|s| {
        let sender = s.spawn(|| send_signals(pid, &stop));
        for i in 0..10 {
            let extra: &[&str] = if i % 2 == 0 {
                &["--leave-running"]
            } else {
                &["--leave-running", "--no-pre-copy"]
            };
            let o = w.dump(extra);
            assert!(o.status.success(), "dump {i}: {}", stderr(&o));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sender.join().unwrap()
    });
    assert!(usr1 > 10 && rt > 10, "too few signals sent: {usr1} {rt}");
    std::fs::write(w.dir.join("sent"), format!("usr1 {usr1}\nrtmin {rt}\n")).unwrap();
    w.go();
    w.expect_pass();
}

/// The checker of `signals_during_dumps` sees a lost signal.
#[test]
fn sigcount_detects_a_lost_signal() {
    let w = Workload::start("sigcount", &[]);
    // SAFETY: plain kill of the test's workload.
    unsafe { libc::kill(w.pid, libc::SIGUSR1) };
    wait_until("the signal to be taken", Duration::from_secs(5), || {
        !pending(w.pid, libc::SIGUSR1)
    });
    std::fs::write(w.dir.join("sent"), "usr1 2\nrtmin 0\n").unwrap();
    w.go();
    let res = w.dir.join("result");
    wait_until("a result", Duration::from_secs(30), || res.exists());
    let text = std::fs::read_to_string(&res).unwrap();
    assert!(
        text.starts_with("FAIL") && text.contains("SIGUSR1 deliveries"),
        "{text}"
    );
}

/// Someone else stops and continues the target while it is dumped: after
/// each dump it is stopped exactly when the last job-control signal sent
/// was SIGSTOP.
#[test]
fn stopped_and_continued_during_dumps() {
    let w = Workload::start("memory", &["64"]);
    let mut seed = 0x5eed_u64;
    for i in 0..12 {
        let mut child = spawn_crest(&dump_args(&w, &["--leave-running", "-q"]));
        let mut last = None;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(st.success(), "dump {i} failed: {err}");
                break;
            }
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let sig = if (seed >> 33).is_multiple_of(2) {
                libc::SIGSTOP
            } else {
                libc::SIGCONT
            };
            // SAFETY: plain kill of the test's workload.
            unsafe { libc::kill(w.pid, sig) };
            last = Some(sig);
            std::thread::sleep(Duration::from_millis(((seed >> 40) % 40) + 1));
        }
        let want_stopped = last == Some(libc::SIGSTOP);
        wait_until("the job-control state", Duration::from_secs(5), || {
            tracer(w.pid) == 0 && (state(w.pid) == 'T') == want_stopped
        });
        // SAFETY: as above.
        unsafe { libc::kill(w.pid, libc::SIGCONT) };
    }
    w.go();
    w.expect_pass();
}

/// crest under ever smaller address-space limits: wherever it runs out
/// of memory (an error, or an abort), the target runs on as it was.
#[test]
fn crest_out_of_memory() {
    out_of_memory(&["--leave-running", "--no-pre-copy"]);
}

/// The same with the pre-copy (crest then fails while the tree runs
/// tracked).  Before panics aborted at once, a panic there for want of
/// memory deadlocked in the standard panic hook, and the workload failed.
#[test]
fn crest_out_of_memory_during_precopy() {
    out_of_memory(&["--leave-running"]);
}

fn out_of_memory(flags: &[&str]) {
    use std::os::unix::process::CommandExt;
    let w = Workload::start("memory", &["64"]);
    let before = snap(w.pid);
    let mut mid_dump = 0;
    // crest needs about 8 to 16 MiB of address space for this dump: step
    // through that range finely, and a few larger limits.
    let limits = (16..=36).map(|h| h << 19).chain([48 << 20, 96 << 20]);
    for limit in limits {
        let mib = limit as f64 / (1 << 20) as f64;
        let mut c = Command::new(crest_bin());
        c.args(dump_args(&w, flags))
            .env("CREST_FAULT_TRACE", "1")
            .stdin(Stdio::null());
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                libc::setrlimit(libc::RLIMIT_AS, &l);
                Ok(())
            });
        }
        let o = c.output().unwrap();
        let err = stderr(&o);
        let points = err.matches("crest-fault-point").count();
        eprintln!(
            "RLIMIT_AS {mib} MiB: {:?} after {points} points: {}",
            o.status,
            err.lines()
                .rev()
                .find(|l| !l.starts_with("crest-fault-point"))
                .unwrap_or("")
        );
        // Failed after its first injected call.
        if !o.status.success() && points > 0 {
            mid_dump += 1;
        }
        intact(w.pid, &before);
        let _ = std::fs::remove_file(w.image());
    }
    assert!(
        mid_dump > 0,
        "no limit made crest fail in the middle of a dump"
    );
    w.go();
    w.expect_pass();
}

/// Sends `sig` to `crest ARGS` at half the time an uninterrupted run
/// took (earlier if it finishes first); returns its output.
/// `undo` undoes a run that finished before the signal.
fn interrupted(args: &[String], full: Duration, sig: i32, undo: &dyn Fn()) -> std::process::Output {
    let mut at = full / 2;
    loop {
        let child = spawn_crest(args);
        std::thread::sleep(at);
        // SAFETY: plain kill of our child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait_with_output().unwrap();
        if !o.status.success() || at < Duration::from_millis(1) {
            return o;
        }
        undo();
        at /= 2;
    }
}

fn no_partial_files(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n == "img")
        .collect();
    assert!(left.is_empty(), "files left: {left:?}");
}

#[test]
fn sigint_and_sigterm_during_dump() {
    let w = Workload::start("memory", &["128"]);
    let args = dump_args(&w, &["--leave-running", "-q"]);
    let t = Instant::now();
    let o = crest(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let full = t.elapsed();
    std::fs::remove_file(w.image()).unwrap();
    let before = snap(w.pid);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let o = interrupted(&args, full, sig, &|| {
            let _ = std::fs::remove_file(w.image());
        });
        let err = stderr(&o);
        let name = if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        assert!(!o.status.success(), "crest ignored {name}");
        assert!(
            err.contains(&format!("interrupted by {name}")) && err.contains("dump abandoned"),
            "crest did not say it stopped: {err}"
        );
        intact(w.pid, &before);
        no_partial_files(&w.dir);
    }
    w.go();
    w.expect_pass();
}

#[test]
fn sigint_and_sigterm_during_restore() {
    let w = Workload::start("memory", &["128"]);
    w.dump_ok();
    let img = w.image().display().to_string();
    let args: Vec<String> = ["restore", "-i", &img, "-d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = Instant::now();
    w.restore_ok();
    let full = t.elapsed();
    // SAFETY: plain kill of the restored workload.
    unsafe { libc::kill(w.pid, libc::SIGKILL) };
    reap(w.pid, Duration::from_secs(10));
    let files = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    };
    let before = files(&w.dir);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let o = interrupted(&args, full, sig, &|| {
            // SAFETY: plain kill of the restored workload.
            unsafe { libc::kill(w.pid, libc::SIGKILL) };
            reap(w.pid, Duration::from_secs(10));
        });
        let err = stderr(&o);
        let name = if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        assert!(!o.status.success(), "crest ignored {name} (restore)");
        assert!(
            err.contains(&format!("interrupted by {name}")) && err.contains("restore abandoned"),
            "crest did not say it stopped: {err}"
        );
        reap(w.pid, Duration::from_secs(5));
        assert!(!alive(w.pid), "a half-restored process is left");
        assert_eq!(files(&w.dir), before, "files left by the restore");
    }
    w.restore_ok();
    w.go();
    w.expect_pass();
}
