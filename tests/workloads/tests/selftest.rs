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

/// The first descriptor of `pid` whose /proc link and fdinfo satisfy `pick`.
fn find_fd(pid: u32, pick: impl Fn(&str, &str) -> bool) -> Option<i32> {
    let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds.into_iter().find(|fd| {
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        pick(&link, &info)
    })
}

#[test]
fn events() {
    pass(&["events"]);
}

#[test]
fn events_detects_a_changed_eventfd_count() {
    let mut w = Workload::start(&["events"], &[]);
    w.wait_ready();
    // Eventfd a holds 0x1_2345_6789.
    let fd = find_fd(w.pid(), |l, i| {
        l == "anon_inode:[eventfd]"
            && i.lines().any(|x| {
                x.strip_prefix("eventfd-count:")
                    .is_some_and(|v| v.trim() == "123456789")
            })
    })
    .expect("eventfd a");
    let ours = steal_fd(w.pid() as i32, fd).expect("pidfd_getfd");
    let one = 1u64;
    // SAFETY: our duplicate; writes 8 bytes from a valid u64.
    unsafe {
        assert_eq!(libc::write(ours, (&one as *const u64).cast(), 8), 8);
        libc::close(ours);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "eventfd a: eventfd-count");
}

#[test]
fn events_detects_an_extra_epoll_registration() {
    let mut w = Workload::start(&["events"], &[]);
    w.wait_ready();
    let ep = find_fd(w.pid(), |l, _| l == "anon_inode:[eventpoll]").expect("an epoll fd");
    let ours = steal_fd(w.pid() as i32, ep).expect("pidfd_getfd");
    // SAFETY: plain syscalls on our own descriptors; the event is valid.
    unsafe {
        let efd = libc::eventfd(0, 0);
        assert!(efd >= 0);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0x5eed,
        };
        // The registration belongs to the shared epoll instance and lives
        // as long as our eventfd, which the test holds until go.
        assert_eq!(libc::epoll_ctl(ours, libc::EPOLL_CTL_ADD, efd, &mut ev), 0);
        libc::close(ours);
        let o = w.go();
        libc::close(efd);
        assert_fail(&w.name, &o, "registrations (tfd, events, data)");
    }
}

#[test]
fn events_detects_a_disarmed_timerfd() {
    let mut w = Workload::start(&["events"], &[]);
    w.wait_ready();
    // Timerfd t1 repeats every 1.500000123 s.
    let fd = find_fd(w.pid(), |l, i| {
        l == "anon_inode:[timerfd]" && i.contains("it_interval: (1, 500000123)")
    })
    .expect("timerfd t1");
    let ours = steal_fd(w.pid() as i32, fd).expect("pidfd_getfd");
    // SAFETY: our duplicate; a zeroed itimerspec disarms it.
    unsafe {
        let off: libc::itimerspec = std::mem::zeroed();
        assert_eq!(
            libc::timerfd_settime(ours, 0, &off, std::ptr::null_mut()),
            0
        );
        libc::close(ours);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "timerfd t1");
}

#[test]
fn posix_timers() {
    pass(&["posix-timers"]);
}

#[test]
fn posix_timers_detects_a_stray_signal() {
    let mut w = Workload::start(&["posix-timers"], &[]);
    w.wait_ready();
    // One of the timers' signals, from outside: as if a timer had fired.
    // SAFETY: plain kill of our own child.
    assert_eq!(unsafe { libc::kill(w.pid() as i32, libc::SIGUSR1) }, 0);
    let o = w.go();
    assert_fail(&w.name, &o, "signals delivered before the functional test");
}

#[test]
fn unix_sockets() {
    pass(&["unix-sockets"]);
}

#[test]
fn unix_sockets_detects_an_extra_queued_byte() {
    let mut w = Workload::start(&["unix-sockets"], &[]);
    w.wait_ready();
    // R's end of the stream pair to C1 (fd 30): one more byte for C1.
    let ours = steal_fd(w.pid() as i32, 30).expect("pidfd_getfd");
    // SAFETY: our duplicate of the socket; one byte from a valid buffer.
    unsafe {
        assert_eq!(
            libc::send(ours, b"!".as_ptr().cast(), 1, libc::MSG_DONTWAIT),
            1
        );
        libc::close(ours);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "C1");
}

#[test]
fn mm_detects_a_changed_environment() {
    let mut w = Workload::start(&["mm", "a"], &[("CREST_WL_SELFTEST", "x y")]);
    w.wait_ready();
    // The first byte of the environment block (env_start, stat field 50).
    let stat = fs::read_to_string(format!("/proc/{}/stat", w.pid())).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    // Field 3 (state) is rest's first; env_start is field 50.
    let env_start: u64 = rest
        .split_whitespace()
        .nth(50 - 3)
        .and_then(|v| v.parse().ok())
        .expect("env_start");
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{}/mem", w.pid()))
        .expect("open /proc/pid/mem");
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    mem.read_at(&mut b, env_start).expect("read environ");
    mem.write_at(&[b[0] ^ 0x20], env_start)
        .expect("write environ");
    let o = w.go();
    assert_fail(&w.name, &o, "environ");
}

#[test]
fn files_detects_a_moved_offset() {
    let mut w = Workload::start(&["files"], &[]);
    w.wait_ready();
    let fd = find_fd(w.pid(), |l, _| l.ends_with("/b")).expect("file b");
    let ours = steal_fd(w.pid() as i32, fd).expect("pidfd_getfd");
    // SAFETY: our duplicate shares the description, and so its offset.
    unsafe {
        assert!(libc::lseek(ours, 1, libc::SEEK_CUR) > 0);
        libc::close(ours);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "fdinfo pos/flags");
}

#[test]
fn attrs_detects_a_changed_nice_value() {
    assert!(is_root(), "the attrs selftest needs root");
    let mut w = Workload::start(&["attrs"], &[]);
    w.wait_ready();
    // Its nice value moved by one, from outside (CAP_SYS_NICE: the
    // workload runs with other ids than ours).
    // SAFETY: plain get/setpriority on our child; errno is reset first.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, w.pid());
        assert_eq!(*libc::__errno_location(), 0, "getpriority");
        let other = if nice < 19 { nice + 1 } else { nice - 1 };
        assert_eq!(libc::setpriority(libc::PRIO_PROCESS, w.pid(), other), 0);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "getpriority");
}

/// The 2 MiB huge page pool raised by `n` pages while held; the old size
/// is put back when dropped (also when the test fails).  One at a time.
struct HugePool {
    old: u64,
    _lock: std::sync::MutexGuard<'static, ()>,
}

const HUGE_POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

impl HugePool {
    fn reserve(n: u64) -> HugePool {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        assert!(
            is_root(),
            "the hugetlb selftests need root (huge page pools)"
        );
        let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let read = |p: &str| -> u64 { fs::read_to_string(p).unwrap().trim().parse().unwrap() };
        let old = read(HUGE_POOL);
        fs::write(HUGE_POOL, format!("{}\n", old + n)).unwrap();
        let free = read("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
        assert!(
            free >= n,
            "could not get {n} free 2 MiB huge pages ({free} free)"
        );
        HugePool { old, _lock: lock }
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        let _ = fs::write(HUGE_POOL, format!("{}\n", self.old));
    }
}

#[test]
fn hugetlb() {
    let _p = HugePool::reserve(6);
    pass(&["hugetlb", "2048"]);
}

#[test]
fn hugetlb_detects_a_changed_private_page() {
    let _p = HugePool::reserve(6);
    disturbed(
        &["hugetlb", "2048"],
        "private",
        "A (2048 kB): content differs at byte 800",
    );
}

#[test]
fn hugetlb_detects_a_split_memfd_mapping() {
    let _p = HugePool::reserve(6);
    disturbed(
        &["hugetlb", "2048"],
        "split",
        "C (2048 kB): a write through the mapping is not read through the memfd",
    );
}

#[test]
fn aio() {
    pass(&["aio"]);
}

#[test]
fn aio_detects_a_lost_event() {
    disturbed(&["aio"], "lose", "big: unreaped events after the restore");
}

/// A private tmpfs for the fanotify workload (unmounted on drop).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new() -> Tmpfs {
        let d = std::env::temp_dir().join(format!(
            "crest-wl-selftest-{}-{}-tmpfs",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&d).expect("create the tmpfs mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "crest-selftest"])
            .arg(&d)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs on {} (needs root)",
            d.display()
        );
        Tmpfs(d)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn fanotify() {
    let t = Tmpfs::new();
    pass(&["fanotify", t.path()]);
}

#[test]
fn fanotify_detects_a_removed_mark() {
    let t = Tmpfs::new();
    let mut w = Workload::start(&["fanotify", t.path()], &[]);
    w.wait_ready();
    // Our duplicate is the same group: removing the mark on w/a removes
    // the workload's.
    let Some(fd) = steal_fd(w.pid() as i32, 40) else {
        panic!("pidfd_getfd refused");
    };
    let a = std::ffi::CString::new(format!("{}/w/a", t.path())).unwrap();
    // SAFETY: plain syscalls on our duplicate, a valid C string.
    unsafe {
        assert_eq!(
            libc::fanotify_mark(
                fd,
                libc::FAN_MARK_REMOVE,
                libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE,
                libc::AT_FDCWD,
                a.as_ptr()
            ),
            0
        );
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "group A fdinfo");
    assert_fail(&w.name, &o, "group A events");
}

#[test]
fn inotify_deleted() {
    pass(&["inotify-deleted"]);
}

/// Removes watch 3 (the one on the unlinked file) of the workload's
/// inotify behind its back: the checker must see the watch and the
/// events it ends with (`events`) missing.
fn inotify_deleted_detects_a_removed_watch_with(args: &[&str], events: &str) {
    let mut w = Workload::start(args, &[]);
    w.wait_ready();
    let Some(fd) = steal_fd(w.pid() as i32, 51) else {
        panic!("pidfd_getfd refused");
    };
    // SAFETY: plain syscalls on our duplicate of the same inotify.
    unsafe {
        assert_eq!(libc::inotify_rm_watch(fd, 3), 0);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "inotify watches (wd, mask)");
    assert_fail(&w.name, &o, events);
}

#[test]
fn inotify_deleted_detects_a_removed_watch() {
    inotify_deleted_detects_a_removed_watch_with(
        &["inotify-deleted"],
        "events after writing the unlinked file",
    );
}

#[test]
fn inotify_deleted_mapped() {
    pass(&["inotify-deleted", "mapped"]);
}

#[test]
fn inotify_deleted_mapped_detects_a_removed_watch() {
    inotify_deleted_detects_a_removed_watch_with(
        &["inotify-deleted", "mapped"],
        "events after unmapping the unlinked file",
    );
}

#[test]
fn terminals() {
    pass(&["terminals", "4", "5"]);
}

#[test]
fn terminals_detects_changed_termios() {
    let mut w = Workload::start(&["terminals", "4", "5"], &[]);
    w.wait_ready();
    // Another description of the same terminal: its termios is the
    // terminal's.
    let c = std::ffi::CString::new("/dev/tty5").unwrap();
    // SAFETY: plain syscalls on our own descriptor.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NOCTTY);
        assert!(fd >= 0, "open /dev/tty5");
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut t), 0);
        t.c_cc[libc::VMIN] = 1;
        assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &t), 0);
        libc::close(fd);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "fd 62: (fdinfo flags, rdev, TIOCGDEV, termios");
}

#[test]
fn terminals_alias() {
    pass(&["terminals", "alias"]);
}

#[test]
fn lazy_detects_a_changed_word() {
    let mut w = Workload::start(&["lazy", "8"], &[]);
    w.wait_ready();
    let a = w
        .read("info")
        .lines()
        .find_map(|l| l.strip_prefix("a="))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .expect("a= in info");
    let mem = Path::new("/proc").join(w.pid().to_string()).join("mem");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .expect("open /proc/pid/mem");
    use std::os::unix::fs::FileExt;
    f.write_at(&[0x5a], a + 3 * 4096 + 17)
        .expect("write /proc/pid/mem");
    let o = w.go();
    assert_fail(&w.name, &o, "region A: 1 words wrong");
}

#[test]
fn lazy() {
    pass(&["lazy", "8", "fork"]);
    pass(&["lazy", "8", "spin"]);
}

/// `ipcshm` hands its container init over (its launcher writes `ready`
/// with the init's pid and exits): started, readied, and its verdict read
/// here, since the init is not this process's child.
struct Handover {
    w: Workload,
    init: i32,
}

impl Handover {
    fn start(args: &[&str]) -> Handover {
        let mut w = Workload::start(args, &[]);
        let start = Instant::now();
        let path = w.dir.join("ready");
        while !path.exists() {
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "{}: no ready; stderr: {}",
                w.name,
                w.read("stderr")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let init: i32 = w.read("ready").trim().parse().expect("ready holds a pid");
        let _ = w.child.take().map(|mut c| c.wait());
        Handover { w, init }
    }

    fn go(&self) -> String {
        fs::write(self.w.dir.join("go"), b"").expect("create go");
        let start = Instant::now();
        let res = self.w.dir.join("result");
        while !res.exists() {
            assert!(
                start.elapsed() < EXIT_TIMEOUT,
                "{}: no result after go",
                self.w.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The init exits right after its verdict: a zombie until reaped
        // by whoever adopted it.
        self.w.read("result")
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if !self.w.dir.join("result").exists() {
            // SAFETY: plain kill of the init this test started, which has
            // not finished.
            unsafe { libc::kill(self.init, libc::SIGKILL) };
        }
    }
}

#[test]
fn ipcshm() {
    assert!(
        is_root(),
        "ipcshm needs root (new PID and IPC namespaces, SHM_LOCK)"
    );
    let h = Handover::start(&["ipcshm"]);
    let r = h.go();
    assert_eq!(r, "PASS\n", "ipcshm: {r}");
}

/// A byte of the segment nobody attaches, changed from inside the
/// namespace before go: the init must fail naming it.
#[test]
fn ipcshm_detects_a_changed_unattached_segment() {
    assert!(
        is_root(),
        "ipcshm needs root (new PID and IPC namespaces, SHM_LOCK)"
    );
    let h = Handover::start(&["ipcshm"]);
    let ns = fs::File::open(format!("/proc/{}/ns/ipc", h.init)).expect("open ns/ipc");
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this helper thread only; the segment is
            // attached, one byte written inside it, and detached.
            unsafe {
                assert_eq!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWIPC), 0);
                let id = libc::shmget(0xc15a_0002_u32 as i32, 0, 0);
                assert!(id >= 0, "LONE not found");
                let a = libc::shmat(id, std::ptr::null(), 0);
                assert_ne!(a as isize, -1);
                *a.cast::<u8>().add(5 * 4096 + 3) = 0x77;
                libc::shmdt(a);
            }
        });
    });
    let r = h.go();
    assert!(
        r.starts_with("FAIL\n") && r.contains("C: content of LONE at byte 20483"),
        "ipcshm: {r}"
    );
}
#[test]
fn mqueue() {
    pass(&["mqueue"]);
}

#[test]
fn mqueue_host() {
    pass(&["mqueue", "host"]);
}

#[test]
fn mqueue_notify() {
    pass(&["mqueue", "notify"]);
}

/// One more message in /crest-a (through the workload's own fd 40, from
/// outside): the message check must see it.
#[test]
fn mqueue_detects_an_extra_message() {
    let mut w = Workload::start(&["mqueue"], &[]);
    w.wait_ready();
    let ours = steal_fd(w.pid() as i32, 40).expect("pidfd_getfd");
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: our duplicate of the queue descriptor; a valid buffer and
    // timespec.
    unsafe {
        let r = libc::syscall(
            libc::SYS_mq_timedsend,
            ours,
            b"stray".as_ptr(),
            5usize,
            4u32,
            &ts as *const libc::timespec,
        );
        assert_eq!(r, 0, "mq_timedsend");
        libc::close(ours);
    }
    let o = w.go();
    assert_fail(
        &w.name,
        &o,
        "/crest-a: messages (priority, text) in receive order",
    );
}

/// The queue's O_NONBLOCK cleared from outside (one description, so the
/// workload's fd 40 sees it): the flag check must fail.
#[test]
fn mqueue_detects_a_changed_nonblock() {
    let mut w = Workload::start(&["mqueue"], &[]);
    w.wait_ready();
    let ours = steal_fd(w.pid() as i32, 40).expect("pidfd_getfd");
    // SAFETY: F_SETFL on our duplicate.
    unsafe {
        assert_eq!(libc::fcntl(ours, libc::F_SETFL, libc::O_RDWR), 0);
        libc::close(ours);
    }
    let o = w.go();
    assert_fail(&w.name, &o, "fd 40 (/crest-a): access mode and O_NONBLOCK");
}

#[test]
fn mqueue_nofds() {
    pass(&["mqueue", "nofds"]);
}
