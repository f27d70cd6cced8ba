//! The processes the driver starts: spawning with rusage, reaping, and
//! killing everything on the way out.
//!
//! The driver is a child subreaper, so the workloads (started by `crest
//! run`, restored by `crest restore -d`) become its children once crest has
//! exited; it reaps a dumped workload at once, which frees its PID for the
//! restore. Every live process it must kill on the way out is in a small
//! lock-free registry that a SIGINT/SIGTERM/SIGHUP handler can read too.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Pids to kill on the way out; 0 is a free slot.
static LIVE: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

/// Adds `pid` to the processes killed (with its process group) on exit.
pub fn register(pid: i32) {
    for s in &LIVE {
        if s.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
    eprintln!("crest-bench: warning: too many live processes to track; {pid} is not");
}

/// Removes `pid` (it has been reaped: its number may be reused).
pub fn unregister(pid: i32) {
    for s in &LIVE {
        let _ = s.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// SIGKILLs every registered process and its process group.
fn kill_registered() {
    for s in &LIVE {
        let pid = s.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; the pid is a
            // process we started and have not reaped, so it is still ours.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    kill_registered();
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) };
}

/// Makes the driver a child subreaper and installs the exit-signal handler.
pub fn init() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes a flag of ours.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions (kill,
        // _exit) and reads atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    Ok(())
}

/// How a process ended and what it used.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub status: i32,
    pub wall: Duration,
    pub user_ms: f64,
    pub sys_ms: f64,
    pub maxrss_kib: u64,
}

impl Ended {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn cpu_ms(&self) -> f64 {
        self.user_ms + self.sys_ms
    }

    pub fn wall_ms(&self) -> f64 {
        self.wall.as_secs_f64() * 1e3
    }

    pub fn describe(&self) -> String {
        describe_status(self.status)
    }
}

pub fn describe_status(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exit status {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("wait status {st:#x}")
    }
}

fn tv_ms(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 * 1e3 + tv.tv_usec as f64 / 1e3
}

/// A spawned child whose end is collected with `wait4` (for its rusage).
pub struct Spawned {
    pub child: Child,
    pub pid: i32,
    pub started: Instant,
    done: bool,
}

impl Spawned {
    pub fn spawn(cmd: &mut Command) -> io::Result<Spawned> {
        let started = Instant::now();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        register(pid);
        Ok(Spawned {
            child,
            pid,
            started,
            done: false,
        })
    }

    /// Blocks until the process ends; its wall time counts from the spawn.
    pub fn wait(&mut self) -> io::Result<Ended> {
        let mut st = 0;
        // SAFETY: rusage is plain data; all-zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: waits for our own child, writing into valid locals.
            let r = unsafe { libc::wait4(self.pid, &mut st, 0, &mut ru) };
            if r == self.pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let wall = self.started.elapsed();
        self.done = true;
        unregister(self.pid);
        Ok(Ended {
            status: st,
            wall,
            user_ms: tv_ms(ru.ru_utime),
            sys_ms: tv_ms(ru.ru_stime),
            maxrss_kib: ru.ru_maxrss as u64,
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: kills and reaps our own unreaped child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
            unregister(self.pid);
        }
    }
}

/// Reaps our child `pid` if it has ended; `Ok(None)` if it still runs.
pub fn try_reap(pid: i32) -> io::Result<Option<i32>> {
    let mut st = 0;
    // SAFETY: non-blocking waitpid on one of our children.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
    if r == pid {
        unregister(pid);
        return Ok(Some(st));
    }
    if r == 0 {
        return Ok(None);
    }
    Err(io::Error::last_os_error())
}

/// Waits up to `timeout` for our child `pid` to end; returns its status.
pub fn reap(pid: i32, timeout: Duration) -> io::Result<Option<i32>> {
    let t = Instant::now();
    loop {
        if let Some(st) = try_reap(pid)? {
            return Ok(Some(st));
        }
        if t.elapsed() > timeout {
            return Ok(None);
        }
        crest_bench::sleep_ns(200_000);
    }
}

/// Our children (from /proc), reaped or not.
fn children() -> Vec<i32> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state ppid …
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

/// Waits until we have no children left but `except`, reaping those that
/// end (the other processes of a dumped tree); `Err` lists those left.
pub fn reap_others(except: &[i32], timeout: Duration) -> Result<(), Vec<i32>> {
    let t = Instant::now();
    loop {
        let left: Vec<i32> = children()
            .into_iter()
            .filter(|p| !except.contains(p))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        for &p in &left {
            let _ = try_reap(p);
        }
        if t.elapsed() > timeout {
            return Err(left);
        }
        crest_bench::sleep_ns(500_000);
    }
}

/// Kills every registered process and every remaining child, and reaps
/// them all. Called between runs (when no child should be left) and at the
/// end; returns how many stray processes it had to kill.
pub fn settle() -> usize {
    kill_registered();
    let t = Instant::now();
    let mut killed_strays = 0;
    loop {
        // SAFETY: non-blocking reap of any child; we only call this when no
        // child's status is still wanted elsewhere.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
        if r > 0 {
            unregister(r);
            continue;
        }
        if r < 0 {
            break; // ECHILD: none left
        }
        if t.elapsed() > Duration::from_millis(200) {
            for pid in children() {
                // SAFETY: kill of our own child (a process we started or
                // a descendant of one, reparented to us).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed_strays += 1;
            }
            if t.elapsed() > Duration::from_secs(10) {
                eprintln!("crest-bench: warning: children still not reaped after 10 s");
                break;
            }
        }
        crest_bench::sleep_ns(1_000_000);
    }
    for s in &LIVE {
        s.store(0, Ordering::SeqCst);
    }
    killed_strays
}

/// A pipe; both ends close-on-exec (the spawn places them on 0/1/2).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody
    // else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A file to take a child's stdout or stderr.
pub fn out_file(path: &Path) -> io::Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(path)?))
}
