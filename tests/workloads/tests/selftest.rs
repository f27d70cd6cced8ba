//! Runs every workload without any checkpoint: each must verify cleanly
//! (PASS) when nothing touches it between `ready` and `go`, and a few must
//! FAIL when their state is disturbed on purpose (their checks are real).
//! Also makes `cargo test --workspace` build the workload binary.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_crest-workload");
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A started workload; killed and reaped on drop if still running. The
/// directory is removed unless the test failed (kept for inspection).
struct Workload {
    child: Option<Child>,
    dir: PathBuf,
    name: String,
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("{}: kept {}", self.name, self.dir.display());
        }
    }
}

struct Outcome {
    code: Option<i32>,
    result: String,
    stderr: String,
}

impl Workload {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let name = args.join(" ");
        let dir = std::env::temp_dir().join(format!(
            "crest-wl-selftest-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            args[0]
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        let stderr = fs::File::create(dir.join("stderr")).expect("create stderr file");
        let child = Command::new(BIN)
            .arg(args[0])
            .arg(&dir)
            .args(&args[1..])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn crest-workload");
        Self {
            child: Some(child),
            dir,
            name,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Waits for `ready` and checks it holds the workload's pid.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let path = self.dir.join("ready");
        while !path.exists() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "{}: exited ({st}) before ready; result: {:?}; stderr: {}",
                    self.name,
                    self.read("result"),
                    self.read("stderr")
                );
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "{}: no ready after {READY_TIMEOUT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let ready = self.read("ready");
        assert_eq!(
            ready,
            format!("{}\n", self.pid()),
            "{}: ready must hold the pid",
            self.name
        );
        assert!(
            !self.dir.join("ready.tmp").exists(),
            "{}: ready.tmp left behind",
            self.name
        );
    }

    /// Sends go (and "go\n" into the fifo if there is one), waits for exit.
    fn go(&mut self) -> Outcome {
        let fifo = self.dir.join("fifo");
        if fifo.exists() {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open fifo");
            f.write_all(b"go\n").expect("write fifo");
        }
        fs::write(self.dir.join("go"), b"").expect("create go");
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                break st;
            }
            assert!(
                start.elapsed() < EXIT_TIMEOUT,
                "{}: still running {EXIT_TIMEOUT:?} after go",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        self.child = None;
        Outcome {
            code: status.code(),
            result: self.read("result"),
            stderr: self.read("stderr"),
        }
    }
}

fn assert_pass(name: &str, o: &Outcome) {
    assert!(
        o.result.starts_with("PASS\n") && o.code == Some(0),
        "{name}: expected PASS and exit 0, got exit {:?}\nresult:\n{}\nstderr:\n{}",
        o.code,
        o.result,
        o.stderr
    );
    assert_eq!(
        o.result, "PASS\n",
        "{name}: a PASS result has no other lines"
    );
}

fn assert_fail(name: &str, o: &Outcome, needle: &str) {
    assert!(
        o.result.starts_with("FAIL\n") && o.code == Some(1) && o.result.contains(needle),
        "{name}: expected FAIL mentioning {needle:?} and exit 1, got exit {:?}\nresult:\n{}",
        o.code,
        o.result
    );
}

fn pass(args: &[&str]) -> Workload {
    pass_env(args, &[])
}

fn pass_env(args: &[&str], env: &[(&str, &str)]) -> Workload {
    let mut w = Workload::start(args, env);
    w.wait_ready();
    let o = w.go();
    assert_pass(&w.name, &o);
    w
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cpu_has(flag: &str) -> bool {
    fs::read_to_string("/proc/cpuinfo")
        .map(|t| {
            t.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == flag))
        })
        .unwrap_or(false)
}

fn check_vector_info(w: &Workload) {
    let info = w.read("info");
    if cpu_has("avx512f") && cpu_has("avx512bw") {
        assert!(
            info.contains("vector=avx512\n"),
            "{}: AVX-512 CPU but info says {info:?}",
            w.name
        );
    } else if cpu_has("avx") {
        assert!(
            info.contains("vector=avx\n"),
            "{}: AVX CPU but info says {info:?}",
            w.name
        );
    }
}

#[test]
fn regs_busy() {
    let w = pass(&["regs", "busy"]);
    check_vector_info(&w);
}

#[test]
fn regs_sleep() {
    let w = pass(&["regs", "sleep"]);
    check_vector_info(&w);
    assert!(!w.read("info").contains("sleeps=0\n"));
}

#[test]
fn sleep() {
    pass(&["sleep"]);
}

#[test]
fn read() {
    pass(&["read"]);
}

#[test]
fn memory() {
    pass(&["memory", "64"]);
}

#[test]
fn mm() {
    pass_env(&["mm", "a", "b", "c d"], &[("CREST_WL_SELFTEST", "x y")]);
}

#[test]
fn signals() {
    pass(&["signals"]);
}

#[test]
fn timers() {
    pass(&["timers"]);
}

#[test]
fn timers_alarm() {
    pass(&["timers", "alarm"]);
    pass(&["alarm"]);
}

#[test]
fn files() {
    pass(&["files"]);
}

#[test]
fn attrs() {
    assert!(
        is_root(),
        "the attrs selftest needs root (setgroups, setresgid, capabilities)"
    );
    pass(&["attrs"]);
}

#[test]
fn idle() {
    pass(&["idle"]);
}

#[test]
fn unsupported_thread() {
    pass(&["unsupported", "thread"]);
}

#[test]
fn unsupported_child() {
    pass(&["unsupported", "child"]);
}

#[test]
fn unsupported_socket() {
    pass(&["unsupported", "socket"]);
}

#[test]
fn unsupported_netlink() {
    pass(&["unsupported", "netlink"]);
}

#[test]
fn threads() {
    let w = pass(&["threads"]);
    let info = w.read("info");
    assert_eq!(info.lines().filter(|l| l.starts_with("thread ")).count(), 8);
}

#[test]
fn threads_many() {
    pass(&["threads", "200"]);
    pass(&["threads", "1"]);
}

#[test]
fn tree() {
    pass(&["tree"]);
}

#[test]
fn tree_sibling_pgrp() {
    pass(&["tree", "sibling-pgrp"]);
}

#[test]
fn shared_fd() {
    pass(&["shared-fd"]);
}

#[test]
fn pipes() {
    pass(&["pipes"]);
}

#[test]
fn many() {
    pass(&["many"]);
    pass(&["many", "3", "1", "1"]);
}

#[test]
fn many_bad_args_fail_setup() {
    let mut w = Workload::start(&["many", "0"], &[]);
    let st = w.child.as_mut().unwrap().wait().expect("wait");
    w.child = None;
    assert_eq!(st.code(), Some(1));
    assert!(w.read("result").starts_with("FAIL\nsetup: many"));
}

#[test]
fn unknown_scenario_is_a_usage_error() {
    let st = Command::new(BIN)
        .args(["no-such-scenario", "/nonexistent"])
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(st.code(), Some(2));
}

// ---- the checks are real: disturbing the state between ready and go fails

#[test]
fn signals_detects_an_extra_queued_signal() {
    let mut w = Workload::start(&["signals"], &[]);
    w.wait_ready();
    let sig = libc::SIGRTMIN() + 3;
    let val = libc::sigval {
        sival_ptr: 99usize as *mut libc::c_void,
    };
    // SAFETY: queues a signal the workload blocks and handles.
    assert_eq!(unsafe { libc::sigqueue(w.pid() as i32, sig, val) }, 0);
    let o = w.go();
    assert_fail(&w.name, &o, "SIGRTMIN+3 si_value sequence");
}

#[test]
fn timers_detects_a_stray_alarm() {
    let mut w = Workload::start(&["timers"], &[]);
    w.wait_ready();
    // SAFETY: SIGALRM has a counting handler in the workload.
    assert_eq!(unsafe { libc::kill(w.pid() as i32, libc::SIGALRM) }, 0);
    let o = w.go();
    assert_fail(&w.name, &o, "timer signals (ALRM, VTALRM, PROF) before");
}

#[test]
fn memory_detects_a_populated_sparse_page() {
    let mut w = Workload::start(&["memory", "8"], &[]);
    w.wait_ready();
    let info = w.read("info");
    let sparse = info
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("sparse=0x"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .expect("sparse address in info");
    // Write one byte into an untouched page through /proc/<pid>/mem.
    let mem = Path::new("/proc").join(w.pid().to_string()).join("mem");
    match fs::OpenOptions::new().write(true).open(&mem) {
        Ok(f) => {
            use std::os::unix::fs::FileExt;
            f.write_at(&[1], sparse + 5 * 4096)
                .expect("write /proc/pid/mem");
        }
        Err(e) => panic!("cannot open {}: {e}", mem.display()),
    }
    let o = w.go();
    assert_fail(&w.name, &o, "never-touched pages are resident");
}

/// `key=value` from a workload's info file.
fn info_value(w: &Workload, key: &str) -> i32 {
    w.read("info")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: no {key}= in info", w.name))
}

/// The tid of thread `i` of a `threads` workload (from its info file).
fn thread_tid(w: &Workload, i: usize) -> i32 {
    w.read("info")
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "thread" && f.next()?.parse::<usize>().ok()? == i)
                .then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{}: no tid for thread {i} in info", w.name))
}

/// A duplicate of descriptor `fd` of process `pid`: the same open file
/// description (pidfd_getfd), or None where the kernel refuses.
fn steal_fd(pid: i32, fd: i32) -> Option<i32> {
    // SAFETY: plain syscalls; the result fds are ours.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if pidfd < 0 {
            return None;
        }
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        (got >= 0).then_some(got)
    }
}

#[test]
fn threads_detects_a_changed_thread_local() {
    let mut w = Workload::start(&["threads"], &[]);
    w.wait_ready();
    // Thread 3's thread_local! block (address in the info file).
    let tls = w
        .read("info")
        .lines()
        .find_map(|l| {
            l.strip_prefix("thread 3 ")?
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        })
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .expect("thread 3's TLS address in info");
    let mem = Path::new("/proc").join(w.pid().to_string()).join("mem");
    match fs::OpenOptions::new().write(true).open(&mem) {
        Ok(f) => {
            use std::os::unix::fs::FileExt;
            f.write_at(&[0xFF], tls + 8 * 5)
                .expect("write /proc/pid/mem");
        }
        Err(e) => panic!("cannot open {}: {e}", mem.display()),
    }
    let o = w.go();
    assert_fail(&w.name, &o, "thread 3: thread_local! words [5]");
}

#[test]
fn threads_detects_an_extra_thread_directed_signal() {
    let mut w = Workload::start(&["threads"], &[]);
    w.wait_ready();
    let tid = thread_tid(&w, 2);
    // SAFETY: SIGRTMIN+1 is blocked in every thread of the workload.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, w.pid() as i32, tid, libc::SIGRTMIN() + 1) };
    assert_eq!(r, 0);
    let o = w.go();
    assert_fail(&w.name, &o, "thread 2: thread-directed pending");
}

#[test]
fn threads_detects_a_changed_register() {
    let mut w = Workload::start(&["threads"], &[]);
    w.wait_ready();
    // Thread 1 holds its registers across a FUTEX_WAIT; flip a bit of rbx.
    let tid = thread_tid(&w, 1);
    // SAFETY: ptrace of the workload's thread (our descendant); the regs
    // struct is plain data.
    unsafe {
        let null = std::ptr::null_mut::<libc::c_void>();
        if libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) != 0 {
            panic!("PTRACE_SEIZE: {}", std::io::Error::last_os_error());
        }
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null), 0);
        let mut st = 0;
        assert_eq!(libc::waitpid(tid, &mut st, libc::__WALL), tid);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(
            libc::ptrace(
                libc::PTRACE_GETREGS,
                tid,
                null,
                &mut regs as *mut _ as *mut libc::c_void
            ),
            0
        );
        regs.rbx ^= 0x10;
        assert_eq!(
            libc::ptrace(
                libc::PTRACE_SETREGS,
                tid,
                null,
                &mut regs as *mut _ as *mut libc::c_void
            ),
            0
        );
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, tid, null, null), 0);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "rbx across FUTEX_WAIT");
}

#[test]
fn tree_detects_a_killed_grandchild() {
    let mut w = Workload::start(&["tree"], &[]);
    w.wait_ready();
    let a1 = info_value(&w, "A1");
    // SAFETY: kills a grandchild of the workload.
    assert_eq!(unsafe { libc::kill(a1, libc::SIGKILL) }, 0);
    let o = w.go();
    assert_fail(&w.name, &o, "child A1");
    assert!(o.result.contains("killed by signal 9"), "{}", o.result);
}

#[test]
fn shared_fd_detects_a_moved_shared_offset() {
    let mut w = Workload::start(&["shared-fd"], &[]);
    w.wait_ready();
    // Our duplicate shares the three processes' description: moving its
    // offset moves theirs.
    let Some(fd) = steal_fd(w.pid() as i32, 10) else {
        panic!("pidfd_getfd refused");
    };
    // SAFETY: our duplicate.
    unsafe {
        assert!(libc::lseek(fd, 1, libc::SEEK_CUR) > 0);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "lseek(fd 10, 0, SEEK_CUR) before post turn 0");
}

#[test]
fn shared_fd_detects_a_moved_private_offset() {
    let mut w = Workload::start(&["shared-fd"], &[]);
    w.wait_ready();
    let y = info_value(&w, "Y");
    let Some(fd) = steal_fd(y, 12) else {
        panic!("pidfd_getfd refused");
    };
    // SAFETY: our duplicate of Y's own description.
    unsafe {
        assert_eq!(libc::lseek(fd, 5, libc::SEEK_SET), 5);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "its own description");
}

#[test]
fn pipes_detects_an_extra_byte_in_flight() {
    let mut w = Workload::start(&["pipes"], &[]);
    w.wait_ready();
    // Opening /proc/PID/fd/N of a pipe end opens that same pipe.
    let end = format!("/proc/{}/fd/27", w.pid());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&end)
        .expect("open the big pipe's write end");
    f.write_all(b"x").expect("write one byte");
    drop(f);
    let o = w.go();
    assert_fail(&w.name, &o, "FIONREAD(fd 26)");
}

#[test]
fn many_detects_a_killed_child() {
    let mut w = Workload::start(&["many", "4", "2", "1"], &[]);
    w.wait_ready();
    let pids: Vec<i32> = w
        .read("info")
        .lines()
        .find_map(|l| l.strip_prefix("pids="))
        .expect("pids in info")
        .split(',')
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 4);
    // SAFETY: kills a child of the workload.
    assert_eq!(unsafe { libc::kill(pids[2], libc::SIGKILL) }, 0);
    let o = w.go();
    assert_fail(&w.name, &o, "child 2");
    assert!(o.result.contains("killed by signal 9"), "{}", o.result);
}

#[test]
fn pty() {
    pass(&["pty"]);
    pass(&["pty", "unread"]);
}

/// `key=0x...` (hex) from a workload's info file.
fn info_hex(w: &Workload, key: &str) -> u64 {
    w.read("info")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix("=0x"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("{}: no {key}= in info", w.name))
}

#[test]
fn mutator() {
    let mut w = Workload::start(&["mutator", "8"], &[]);
    w.wait_ready();
    // Let it work: it must do at least 1000 iterations before go.
    std::thread::sleep(Duration::from_millis(200));
    let o = w.go();
    assert_pass(&w.name, &o);
    assert!(info_value(&w, "iterations") >= 1000, "{}", w.read("info"));
}

#[test]
fn mutator_needs_iterations() {
    // go before ready: it stops at once, having done nothing.
    let mut w = Workload::start(&["mutator", "1"], &[]);
    fs::write(w.dir.join("go"), b"").unwrap();
    w.wait_ready();
    let o = w.go();
    assert_fail(&w.name, &o, "only 0 iterations before go");
}

/// Pages and slots changed behind the mutator's back (as a stale copy in a
/// checkpoint would be) are reported; it rewrites at most 64 pages and two
/// slots before it sees go.
#[test]
fn mutator_detects_changed_pages_and_slots() {
    let mut w = Workload::start(&["mutator", "8"], &[]);
    w.wait_ready();
    std::thread::sleep(Duration::from_millis(100));
    let pid = w.pid() as i32;
    let a = info_hex(&w, "a");
    let slots = info_hex(&w, "slots");
    let pages = info_value(&w, "pages") as u64;
    // SAFETY: stops our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let start = Instant::now();
    while !fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit(") ")
        .next()
        .unwrap()
        .starts_with('T')
    {
        assert!(start.elapsed() < Duration::from_secs(10), "not stopped");
        std::thread::sleep(Duration::from_millis(2));
    }
    fs::write(w.dir.join("go"), b"").unwrap();
    let mem = Path::new("/proc").join(pid.to_string()).join("mem");
    match fs::OpenOptions::new().write(true).open(&mem) {
        Ok(f) => {
            use std::os::unix::fs::FileExt;
            for pg in 0..pages {
                f.write_at(&[0x55], a + pg * 4096 + 100).unwrap();
            }
            for s in 0..8u64 {
                f.write_at(&[0x55; 8], slots + s * 65536 + 4096 * 3 + 8)
                    .unwrap();
            }
        }
        Err(e) => {
            // SAFETY: resumes our own child.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            panic!("cannot open {}: {e}", mem.display());
        }
    }
    // SAFETY: resumes our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let o = w.go();
    assert_fail(&w.name, &o, "differ in all");
    assert_fail(&w.name, &o, "first differing word 1537");
}

// ---- issue 16: locks and per-description state

#[test]
fn locks() {
    pass(&["locks"]);
}

#[test]
fn fdstate() {
    pass(&["fdstate"]);
}

/// `key=N` from a workload's one-line info file.
fn info_fd(w: &Workload, key: &str) -> i32 {
    w.read("info")
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("{}: no {key} in info", w.name))
}

#[test]
fn locks_detects_a_lost_flock_lock() {
    let mut w = Workload::start(&["locks"], &[]);
    w.wait_ready();
    // The flock lock belongs to the description: unlocking through our
    // duplicate of it drops the workload's lock, as a bad restore would.
    let fd = steal_fd(w.pid() as i32, info_fd(&w, "flock")).expect("pidfd_getfd");
    // SAFETY: our duplicate.
    unsafe {
        assert_eq!(libc::flock(fd, libc::LOCK_UN), 0);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "flock lock blocks another description");
}

#[test]
fn locks_detects_a_lost_ofd_lock() {
    let mut w = Workload::start(&["locks"], &[]);
    w.wait_ready();
    let fd = steal_fd(w.pid() as i32, info_fd(&w, "ofd")).expect("pidfd_getfd");
    // SAFETY: our duplicate; a struct flock of zeros but for the type.
    unsafe {
        let mut f: libc::flock = std::mem::zeroed();
        f.l_type = libc::F_UNLCK as i16;
        assert_eq!(libc::fcntl(fd, libc::F_OFD_SETLK, &f), 0);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "OFD lock blocks another description");
}

#[test]
fn fdstate_detects_a_shared_nonblock_flag() {
    let mut w = Workload::start(&["fdstate"], &[]);
    w.wait_ready();
    // As if both descriptions were one: the blocking one gets O_NONBLOCK.
    let fd = steal_fd(w.pid() as i32, info_fd(&w, "block")).expect("pidfd_getfd");
    // SAFETY: our duplicate.
    unsafe {
        assert_eq!(
            libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK | libc::O_ASYNC),
            0
        );
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "flags of the pipe's two read descriptions");
}

#[test]
fn fdstate_detects_a_filled_hole() {
    let mut w = Workload::start(&["fdstate"], &[]);
    w.wait_ready();
    let fd = steal_fd(w.pid() as i32, info_fd(&w, "sparse")).expect("pidfd_getfd");
    // Writing into the hole allocates blocks, as writing it out would.
    let block = vec![1u8; 1 << 20];
    // SAFETY: our duplicate; the buffer is valid.
    unsafe {
        assert_eq!(
            libc::pwrite(fd, block.as_ptr().cast(), block.len(), 1 << 20),
            1 << 20
        );
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "st_blocks");
}

#[test]
fn deleted() {
    pass(&["deleted"]);
}

#[test]
fn deleted_detects_a_changed_mode() {
    let mut w = Workload::start(&["deleted"], &[]);
    w.wait_ready();
    // The magic link reaches the deleted directory itself.
    let path = format!("/proc/{}/fd/{}", w.pid(), info_fd(&w, "dir"));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    let o = w.go();
    assert_fail(&w.name, &o, "deleted directory");
}

#[test]
fn procfiles() {
    pass(&["procfiles"]);
}

#[test]
fn procfiles_detects_a_moved_offset() {
    let mut w = Workload::start(&["procfiles"], &[]);
    w.wait_ready();
    let fd = steal_fd(w.pid() as i32, info_fd(&w, "status")).expect("pidfd_getfd");
    // SAFETY: our duplicate of the workload's description.
    unsafe {
        assert_eq!(libc::lseek(fd, 2, libc::SEEK_SET), 2);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "status offset");
}

#[test]
fn unixnames() {
    pass(&["unixnames"]);
}

#[test]
fn unixnames_detects_a_directory_that_came_back() {
    let mut w = Workload::start(&["unixnames"], &[]);
    w.wait_ready();
    // As a restore that made the socket's directory again would.
    fs::create_dir(w.dir.join("sd")).unwrap();
    let o = w.go();
    assert_fail(&w.name, &o, "exists again");
}

#[test]
fn pty_detects_lost_unread_bytes() {
    let mut w = Workload::start(&["pty", "unread"], &[]);
    w.wait_ready();
    // Reading them through the master (fd 30 of the root), as a restore
    // that dropped them would leave it.
    let fd = steal_fd(w.pid() as i32, 30).expect("pidfd_getfd");
    let mut buf = [0u8; 64];
    // SAFETY: our duplicate; a valid buffer.
    unsafe {
        assert!(libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 1);
        libc::close(fd);
    }
    let o = w.go();
    // Either a short read (timeout) or other bytes, depending on timing.
    assert_fail(&w.name, &o, "the master");
}

#[test]
fn locks_detects_a_lost_lease() {
    let mut w = Workload::start(&["locks"], &[]);
    w.wait_ready();
    // The lease belongs to the description: our duplicate can drop it.
    let fd = steal_fd(w.pid() as i32, info_fd(&w, "lease")).expect("pidfd_getfd");
    // SAFETY: our duplicate.
    unsafe {
        assert_eq!(libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK), 0);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "F_GETLEASE");
}

#[test]
fn fdstate_detects_another_sigio_owner() {
    let mut w = Workload::start(&["fdstate"], &[]);
    w.wait_ready();
    let fd = steal_fd(w.pid() as i32, info_fd(&w, "block")).expect("pidfd_getfd");
    // Another owner: a process of ours that may receive the signal.
    let mut other = Command::new("sleep").arg("60").spawn().expect("sleep");
    // SAFETY: our duplicate.
    unsafe {
        assert_eq!(libc::fcntl(fd, libc::F_SETOWN, other.id() as i32), 0);
        libc::close(fd);
    }
    let o = w.go();
    let _ = other.kill();
    let _ = other.wait();
    assert_fail(&w.name, &o, "SIGIO owner (F_GETOWN_EX)");
}

#[test]
fn fdstate_detects_another_owner_of_the_unlinked_file() {
    let mut w = Workload::start(&["fdstate"], &[]);
    w.wait_ready();
    let path = format!("/proc/{}/fd/{}", w.pid(), info_fd(&w, "sparse"));
    std::os::unix::fs::chown(&path, Some(0), Some(0)).expect("chown");
    let o = w.go();
    assert_fail(&w.name, &o, "unlinked file owner, mode, size and times");
}

#[test]
fn pty_detects_another_slave_mode() {
    let mut w = Workload::start(&["pty"], &[]);
    w.wait_ready();
    let c = info_value(&w, "C");
    let slave = fs::read_link(format!("/proc/{c}/fd/0")).expect("C's stdin");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&slave, fs::Permissions::from_mode(0o600)).expect("chmod");
    let o = w.go();
    assert_fail(&w.name, &o, "owner, group and mode of the slave node");
}

#[test]
fn pty_detects_lost_slave_input() {
    let mut w = Workload::start(&["pty", "unread"], &[]);
    w.wait_ready();
    // Reading the typed-ahead input through G's stdin (the slave), as a
    // restore that dropped it would leave it.
    let g = info_value(&w, "G");
    let fd = steal_fd(g, 0).expect("pidfd_getfd");
    let mut buf = [0u8; 64];
    // SAFETY: our duplicate; a valid buffer.
    unsafe {
        assert!(libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 1);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "the slave");
}

// ---- task state (issue 16): stops, zombies' groups, names, OOM score

#[test]
fn task_state() {
    pass(&["task-state"]);
}

/// The stopped children's pids from a `task-state` info file.
fn stopped_children(w: &Workload) -> Vec<i32> {
    let info = w.read("info");
    let list = info
        .lines()
        .find_map(|l| l.strip_prefix("stopped=["))
        .and_then(|l| l.strip_suffix(']'))
        .expect("stopped= in info");
    list.split(", ").map(|s| s.parse().unwrap()).collect()
}

#[test]
fn task_state_detects_a_continued_child() {
    let mut w = Workload::start(&["task-state"], &[]);
    w.wait_ready();
    let kids = stopped_children(&w);
    // SAFETY: the workload's own child.
    assert_eq!(unsafe { libc::kill(kids[0], libc::SIGCONT) }, 0);
    let o = w.go();
    assert_fail(&w.name, &o, "as waitid(WSTOPPED|WNOWAIT) reports it");
}

#[test]
fn task_state_detects_a_collected_stop() {
    let mut w = Workload::start(&["task-state"], &[("CREST_WL_DISTURB", "collect")]);
    w.wait_ready();
    let kids = stopped_children(&w);
    let o = w.go();
    assert_fail(&w.name, &o, &format!("stop of child {}", kids[0]));
}

#[test]
fn task_state_detects_a_changed_oom_score_adj() {
    let mut w = Workload::start(&["task-state"], &[]);
    w.wait_ready();
    fs::write(format!("/proc/{}/oom_score_adj", w.pid()), "500\n").unwrap();
    let o = w.go();
    assert_fail(&w.name, &o, "oom_score_adj");
}

#[test]
fn task_state_detects_a_renamed_thread() {
    let mut w = Workload::start(&["task-state"], &[("CREST_WL_DISTURB", "thread-name")]);
    w.wait_ready();
    let o = w.go();
    assert_fail(&w.name, &o, "thread names");
}

/// cgroups a selftest creates and removes: pids (v1) with a child, unified
/// (v2), and cpu (v1) for a thread.
struct SelfCgroups(Vec<String>);

impl SelfCgroups {
    fn new(tag: &str) -> SelfCgroups {
        let name = format!("crest-wl-selftest-{}-{tag}", std::process::id());
        let dirs: Vec<String> = [
            format!("/sys/fs/cgroup/pids/{name}"),
            format!("/sys/fs/cgroup/pids/{name}/child"),
            format!("/sys/fs/cgroup/unified/{name}"),
            format!("/sys/fs/cgroup/cpu/{name}"),
        ]
        .into();
        for d in &dirs {
            fs::create_dir(d).unwrap_or_else(|e| panic!("creating cgroup {d}: {e}"));
        }
        SelfCgroups(dirs)
    }
}

impl Drop for SelfCgroups {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            for _ in 0..500 {
                if fs::remove_dir(d).is_ok() || !Path::new(d).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn cgroups() {
    let cg = SelfCgroups::new("pass");
    let args: Vec<&str> = std::iter::once("cgroups")
        .chain(cg.0.iter().map(String::as_str))
        .collect();
    pass(&args);
}

#[test]
fn cgroups_detects_a_moved_process() {
    let cg = SelfCgroups::new("moved");
    let args: Vec<&str> = std::iter::once("cgroups")
        .chain(cg.0.iter().map(String::as_str))
        .collect();
    let mut w = Workload::start(&args, &[]);
    w.wait_ready();
    // Into the test's own child cgroup (the one C is in).
    fs::write(
        format!("{}/cgroup.procs", cg.0[1]),
        format!("{}\n", w.pid()),
    )
    .unwrap();
    let o = w.go();
    assert_fail(&w.name, &o, "/proc/self/cgroup: expected");
}

// ---- address-space state (issue 16): madvise, droppable, THP, memfd

#[test]
fn mem_state() {
    pass(&["mem-state"]);
}

fn mem_state_disturbed(what: &str, needle: &str) {
    let mut w = Workload::start(&["mem-state"], &[("CREST_WL_DISTURB", what)]);
    w.wait_ready();
    let o = w.go();
    assert_fail(&w.name, &o, needle);
}

#[test]
fn mem_state_detects_lost_advice() {
    mem_state_disturbed("madvise", "VmFlags of the MADV_SEQUENTIAL part");
}

#[test]
fn mem_state_detects_thp_enabled() {
    mem_state_disturbed("thp", "PR_GET_THP_DISABLE");
}

#[test]
fn mem_state_detects_a_memfd_mode() {
    mem_state_disturbed("memfd-mode", "memfd mode");
}

#[test]
fn mem_state_detects_a_busy_memfd() {
    mem_state_disturbed("exec-busy", "execveat of the memfd");
}

// ---- seccomp filters (issue 16)

#[test]
fn seccomp() {
    pass(&["seccomp"]);
}

#[test]
fn seccomp_hostile() {
    pass(&["seccomp", "hostile"]);
}

#[test]
fn seccomp_detects_an_extra_filter() {
    let mut w = Workload::start(&["seccomp"], &[("CREST_WL_DISTURB", "extra")]);
    w.wait_ready();
    let o = w.go();
    assert_fail(&w.name, &o, "main thread: seccomp state");
}

// ---- pidfds (issue 16)

#[test]
fn pidfd() {
    pass(&["pidfd"]);
}

#[test]
fn pidfd_detects_a_killed_child() {
    let mut w = Workload::start(&["pidfd"], &[]);
    w.wait_ready();
    // Kill C: waitid through its pidfd must then see the signal.
    let info = fs::read_to_string(format!("/proc/{}/fdinfo/40", w.pid())).unwrap();
    let c: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: the workload's own child.
    unsafe { libc::kill(c, libc::SIGKILL) };
    let o = w.go();
    assert_fail(&w.name, &o, "waitid(P_PIDFD, C)");
}

// ---- mappings of unlinked files, O_PATH links (issue 16)

fn disturbed(args: &[&str], what: &str, needle: &str) {
    let mut w = Workload::start(args, &[("CREST_WL_DISTURB", what)]);
    w.wait_ready();
    let o = w.go();
    assert_fail(&w.name, &o, needle);
}

#[test]
fn unlinked_maps() {
    pass(&["unlinked-maps"]);
}

#[test]
fn unlinked_maps_detects_a_split_file() {
    disturbed(
        &["unlinked-maps"],
        "split",
        "a: a write through the mapping is not read through the descriptor",
    );
}

#[test]
fn unlinked_maps_detects_a_changed_private_page() {
    disturbed(&["unlinked-maps"], "private", "mapping of b: page 1");
}

#[test]
fn opath_links() {
    pass(&["opath-links"]);
}

#[test]
fn opath_links_detects_a_followed_link() {
    disturbed(&["opath-links"], "followed", "l: file type");
}
