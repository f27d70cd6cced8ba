//! Plumbing shared by the scenarios made of several processes (`tree`,
//! `shared-fd`, `pipes`, `many`).
//!
//! Only the root speaks the harness protocol (`ready`, `result`). Every other
//! member of the tree is forked with [`spawn`], waits for `go` itself with
//! [`member_wait_go`], and reports through the file system: it writes its
//! verdict to `<dir>/child-<pid>` (same format as `result`) and exits with a
//! code chosen by its parent. Members never talk through pipes, sockets or
//! shared memory: the checkpoint must be able to hold the tree as it is.

use std::ffi::CString;
use std::path::Path;

use crate::checks::Checks;
use crate::proto::{Proto, WaitOutcome, GO_TIMEOUT_NS};
use crate::util::{cpath, err_str, errno, sleep_ns};

/// How often a member or root polls for a file by default.
pub const POLL_NS: u64 = 1_000_000;
/// How long (in requested sleep time) a step of the setup or of the checks
/// after go may wait for another member.
pub const STEP_TIMEOUT_NS: u64 = 60_000_000_000;

/// Forks a member of the tree. The new process runs `body` with its own
/// protocol handle (verdict in `<dir>/child-<pid>`), writes the verdict and
/// exits with `pass` (or 1 if a check failed). Returns the child's pid in
/// the parent. The caller must be single-threaded.
pub fn spawn(p: &Proto, pass: i32, body: impl FnOnce(&Proto) -> Checks) -> i32 {
    // SAFETY: the caller is single-threaded, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        p.bail_errno("fork");
    }
    if pid == 0 {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let m = p.for_member(me);
        m.install_member_panic_hook();
        let c = body(&m);
        m.finish_code(&c, pass, 1);
    }
    pid
}

/// SIGKILL for this process when its parent dies (PR_SET_PDEATHSIG).
pub fn kill_with_parent() {
    // SAFETY: integer-only prctl.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as u64,
            0u64,
            0u64,
            0u64,
        )
    };
}

/// Forks (clone with `flags`, e.g. CLONE_NEWPID; 0: a plain fork) a member
/// named `label` (its verdict in `<dir>/child-<label>`, for processes whose
/// own PID is not a stable name, as in a PID namespace) that dies with its
/// parent, runs `body`, writes its verdict and exits with `pass` (or 1).
/// Returns its pid as the parent sees it.  The caller must be
/// single-threaded.
pub fn spawn_labeled(
    p: &Proto,
    label: i32,
    flags: i32,
    pass: i32,
    body: impl FnOnce(&Proto) -> Checks,
) -> i32 {
    // SAFETY: a fork-like clone (no new stack) of a single-threaded
    // process; the child runs ordinary code.
    let pid = unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as u64, 0, 0, 0, 0) };
    if pid < 0 {
        p.bail_errno("clone");
    }
    if pid == 0 {
        kill_with_parent();
        let m = p.for_member(label);
        m.install_member_panic_hook();
        let c = body(&m);
        m.finish_code(&c, pass, 1);
    }
    pid as i32
}

/// Starts a container the harness adopts: clones (with `flags`, new
/// namespaces) a child that runs `init` as the workload's root; this
/// process, the launcher, waits for the child's `inner-ready`, hands the
/// child's pid over in `ready` and exits.  The caller must be
/// single-threaded.
pub fn hand_over(p: &Proto, flags: i32, init: impl FnOnce() -> Checks) -> Checks {
    // SAFETY: a fork-like clone (no new stack) of a single-threaded
    // process.
    let c_pid =
        unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as u64, 0, 0, 0, 0) };
    if c_pid < 0 {
        p.bail_errno(&format!("clone({flags:#x})"));
    }
    if c_pid == 0 {
        return init();
    }
    if wait_path(&p.dir().join("inner-ready"), STEP_TIMEOUT_NS, || Ok(())).is_err() {
        p.bail("the container init did not get ready");
    }
    p.write_aux("ready", &format!("{c_pid}\n"));
    // SAFETY: _exit has no preconditions; the container lives on without us.
    unsafe { libc::_exit(0) }
}

/// In a new member: be killed when the parent (`parent`) dies, so a failed
/// run leaves nothing behind. Exits at once if the parent is already gone.
pub fn die_with_parent(parent: i32) {
    kill_with_parent();
    // SAFETY: getppid/_exit have no preconditions.
    unsafe {
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
}

/// Whether process `pid` still exists (zombies included).
pub fn exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || errno() != libc::ESRCH }
}

/// A member's go-wait: `access(go)` then a `poll_ns` monotonic sleep, like
/// the root's. Gives up (FAIL verdict) after 120 s of sleeping, and exits
/// silently with code 1 if the root `root` has disappeared (the harness gave
/// up on the tree; its directory may be gone).
pub fn member_wait_go(m: &Proto, root: i32, poll_ns: u64) -> WaitOutcome {
    let mut out = WaitOutcome::default();
    loop {
        if m.go_exists() {
            return out;
        }
        if !exists(root) {
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(1) };
        }
        if out.sleeps * poll_ns >= GO_TIMEOUT_NS {
            m.timeout(&out);
        }
        let r = sleep_ns(poll_ns);
        out.sleeps += 1;
        match r {
            0 => {}
            libc::EINTR => out.eintr += 1,
            e => out.other_err = e,
        }
    }
}

/// Waits until `path` exists, sleeping `POLL_NS` at a time, for at most
/// `timeout_ns` of sleep. `ok()` is asked between sleeps and can abort the
/// wait with a reason (a member died early, say).
pub fn wait_path(
    path: &Path,
    timeout_ns: u64,
    mut ok: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let c = cpath(path);
    let mut slept = 0u64;
    loop {
        if present(&c) {
            return Ok(());
        }
        if let Err(e) = ok() {
            // The awaited process may have created the file and ended
            // between the two looks.
            return if present(&c) { Ok(()) } else { Err(e) };
        }
        if slept >= timeout_ns {
            return Err(format!(
                "{} did not appear within {} s",
                path.display(),
                timeout_ns / 1_000_000_000
            ));
        }
        match sleep_ns(POLL_NS) {
            0 => {}
            e => {
                return Err(format!(
                    "sleep while waiting for {}: {}",
                    path.display(),
                    err_str(e)
                ))
            }
        }
        slept += POLL_NS;
    }
}

fn present(path: &CString) -> bool {
    // SAFETY: valid C string.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

/// Reads an integer written by `mark`.
pub fn read_int(dir: &Path, name: &str) -> Option<i64> {
    std::fs::read_to_string(dir.join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// If our child `pid` has ended, reaps it and returns its wait status.
pub fn try_reap(pid: i32) -> Option<i32> {
    let mut st = 0;
    // SAFETY: valid out-pointer; WNOHANG.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    (r == pid).then_some(st)
}

/// If our child `pid` has ended, its wait status, leaving it to be reaped.
pub fn peek_ended(pid: i32) -> Option<i32> {
    // SAFETY: an all-zero siginfo is a valid out-parameter.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; WNOHANG | WNOWAIT only looks.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut si,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid/si_status are valid for a CLD_* siginfo, and si_pid
    // stays 0 if nothing has ended.
    let (who, status, code) = unsafe { (si.si_pid(), si.si_status(), si.si_code) };
    if r != 0 || who != pid {
        return None;
    }
    Some(if code == libc::CLD_EXITED {
        (status & 0xff) << 8
    } else {
        status & 0x7f
    })
}

/// `ok` callback for a root waiting on its children `kids` (name, pid):
/// fails as soon as one of them has ended (without reaping it), quoting its
/// verdict.
pub fn kids_alive<'a, S: AsRef<str>>(
    dir: &'a Path,
    kids: &'a [(S, i32)],
) -> impl FnMut() -> Result<(), String> + 'a {
    move || {
        for (name, k) in kids {
            if let Some(st) = peek_ended(*k) {
                let v = verdict(dir, *k).map(|l| l.join("; ")).unwrap_or_else(|e| e);
                return Err(format!(
                    "{} (pid {k}) ended: {}; its verdict: {v}",
                    name.as_ref(),
                    status_str(st)
                ));
            }
        }
        Ok(())
    }
}

/// `ok` callback for a member: exits silently (code 1) once the root `root`
/// is gone, since the harness gave up on the tree.
pub fn root_alive(root: i32) -> impl FnMut() -> Result<(), String> + Copy {
    move || {
        if exists(root) {
            Ok(())
        } else {
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(1) }
        }
    }
}

/// Waits for our child `pid` to end, at most `timeout_ns` of sleep; on
/// timeout kills it with SIGKILL, reaps it and returns an error.
pub fn reap(pid: i32, timeout_ns: u64) -> Result<i32, String> {
    let mut slept = 0;
    loop {
        let mut st = 0;
        // SAFETY: valid out-pointer; WNOHANG.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return Ok(st);
        }
        if r < 0 {
            return Err(format!("waitpid({pid}): {}", err_str(errno())));
        }
        if slept >= timeout_ns {
            // SAFETY: our child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut st, 0);
            }
            return Err(format!(
                "did not exit within {} s after go (killed)",
                timeout_ns / 1_000_000_000
            ));
        }
        sleep_ns(POLL_NS);
        slept += POLL_NS;
    }
}

/// A wait status in words.
pub fn status_str(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exit {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("status {st:#x}")
    }
}

/// The failure lines of member `pid`'s verdict file; Err if it is missing
/// or malformed.
pub fn verdict(dir: &Path, pid: i32) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(dir.join(format!("child-{pid}")))
        .map_err(|e| format!("no verdict file child-{pid}: {e}"))?;
    let mut lines = text.lines();
    match lines.next() {
        Some("PASS") if lines.clone().next().is_none() => Ok(Vec::new()),
        Some("FAIL") => Ok(lines.map(str::to_string).collect()),
        _ => Err(format!("malformed verdict file child-{pid}: {text:?}")),
    }
}

/// Judges member `who` (pid `pid`) from its reaped status and verdict: it
/// must have exited with `want_code` and written a PASS verdict. Each failure
/// line of its verdict is copied, prefixed with `who`.
pub fn judge(
    c: &mut Checks,
    dir: &Path,
    who: &str,
    pid: i32,
    status: Result<i32, String>,
    want_code: i32,
) {
    match verdict(dir, pid) {
        Ok(lines) => {
            for l in lines {
                c.fail(format!("{who} (pid {pid}): {l}"));
            }
        }
        Err(e) => c.fail(format!("{who} (pid {pid}): {e}")),
    }
    match status {
        Ok(st) => c.ensure(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == want_code,
            || {
                format!(
                    "{who} (pid {pid}) wait status: expected exit {want_code}, got {}",
                    status_str(st)
                )
            },
        ),
        Err(e) => c.fail(format!("{who} (pid {pid}): {e}")),
    }
}

/// The ids a member checks about itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ids {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
}

impl Ids {
    pub fn now() -> Self {
        // SAFETY: the id getters have no preconditions.
        unsafe {
            Self {
                pid: libc::getpid(),
                ppid: libc::getppid(),
                pgid: libc::getpgid(0),
                sid: libc::getsid(0),
            }
        }
    }

    /// Compares every id with `want`, one failure per differing id.
    pub fn check(&self, c: &mut Checks, want: &Ids) {
        c.eq("getppid()", want.ppid, self.ppid);
        self.check_root(c, want);
    }

    /// For the root: every id but the parent's, which is whoever restored
    /// the tree (and may be `crest run`'s short-lived child before ready).
    pub fn check_root(&self, c: &mut Checks, want: &Ids) {
        c.eq("getpid()", want.pid, self.pid);
        c.eq("getpgid(0)", want.pgid, self.pgid);
        c.eq("getsid(0)", want.sid, self.sid);
    }
}

/// Fields of `/proc/<pid>/stat` after the command name: (state, ppid,
/// pgrp, session).
pub fn proc_stat(pid: i32) -> Option<(char, i32, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(") ")?.1;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp, sid))
}
