//! pidfds (pidfd_open, clone3 with CLONE_PIDFD): descriptors that refer
//! to a process.
//!
//! Dump reads the pid from the descriptor's fdinfo (`Pid: -1` once the
//! process has exited and been reaped) and that process's start time.
//! Restore makes a pidfd that refers to the same process:
//! - a process of the restored tree: it does not exist yet when the
//!   descriptors are placed, so the number holds /dev/null until every
//!   process exists; then the holder runs pidfd_open itself and moves the
//!   result to the number;
//! - another process: crest opens it, after checking its start time (a
//!   different process with the same pid is refused by name);
//! - an exited process: crest forks a child with CLONE_PIDFD that exits
//!   at once and reaps it, which leaves a pidfd of a process that exited.
//!
//! A pidfd of a process of the tree registered in an epoll instance is
//! not supported (restore fails naming it); it is rare.

use crate::error::{Context, Error, Result};
use crate::model::{Checkpoint, ObjectKind, OpenFile, OpenTarget, Process};
use crate::task::freeze::{Call, Inject};
use crest_sys::proc::FdInfo;
use std::os::fd::{FromRawFd, OwnedFd};

/// PIDFD_THREAD: the pidfd refers to a thread (shown as O_EXCL).
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// The state of pidfd `info`, or why it cannot be checkpointed.
pub fn collect(info: &FdInfo) -> std::result::Result<OpenTarget, String> {
    let pid: i32 = info
        .get("Pid")
        .and_then(|p| p.trim().parse().ok())
        .ok_or("a pidfd without a Pid line in its fdinfo")?;
    if pid == 0 {
        return Err("a pidfd of a process in another pid namespace".into());
    }
    let start_time = if pid > 0 {
        crest_sys::proc::read_stat(pid)
            .map_err(|e| format!("pidfd of pid {pid}: {e}"))?
            .starttime
    } else {
        0
    };
    Ok(OpenTarget::Pidfd { pid, start_time })
}

fn flags_of(o: &OpenFile) -> u64 {
    (o.flags & (libc::O_NONBLOCK as u32 | PIDFD_THREAD)) as u64
}

/// Whether `pid` is a task of the image.
fn in_tree(ckpt_pids: &dyn Fn(i32) -> bool, pid: i32) -> bool {
    pid > 0 && ckpt_pids(pid)
}

/// Opens pidfd `o` in crest: a pidfd of a process outside the tree or of
/// an exited one, or a /dev/null placeholder for one of the tree's.
pub fn open(
    o: &OpenFile,
    pid: i32,
    start_time: u64,
    is_ours: &dyn Fn(i32) -> bool,
) -> Result<OwnedFd> {
    if in_tree(is_ours, pid) {
        return std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .context(|| "opening /dev/null".into());
    }
    if pid < 0 {
        return exited_pidfd();
    }
    match crest_sys::proc::read_stat(pid) {
        Ok(st) if st.starttime == start_time => {}
        _ => {
            return Err(Error::Incompatible(format!(
                "a pidfd refers to pid {pid}, which is not the same process here (or is gone)"
            )))
        }
    }
    // SAFETY: plain syscall.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags_of(o)) };
    if fd < 0 {
        return Err(crest_sys::Error::last_os(format!("pidfd_open({pid})")).into());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd of a process that has exited and been reaped.
fn exited_pidfd() -> Result<OwnedFd> {
    let mut pidfd: i32 = -1;
    let mut args = [0u64; 11];
    args[0] = libc::CLONE_PIDFD as u64;
    args[1] = &mut pidfd as *mut i32 as u64; // pidfd
    args[4] = libc::SIGCHLD as u64; // exit_signal
                                    // SAFETY: clone3 without CLONE_VM: the child only calls _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), 88usize) };
    if pid == 0 {
        // SAFETY: in the child.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return Err(crest_sys::Error::last_os("making a pidfd of an exited process").into());
    }
    // SAFETY: reaping the child made above.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
    // SAFETY: the kernel wrote a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// Once every process exists: the pidfds of `p` that refer to processes
/// of the tree are opened by `p` itself and moved to their numbers.
pub fn restore_in_tree(t: &impl Inject, ckpt: &Checkpoint, p: &Process) -> Result<()> {
    if p.shares_files_with.is_some() {
        return Ok(()); // its parent's table: done there
    }
    let ours = |pid: i32| {
        ckpt.processes
            .iter()
            .any(|q| q.pid == pid || q.threads.iter().any(|t| t.tid == pid))
    };
    for fd in &p.fds {
        let Some(ObjectKind::Open(o)) = ckpt.object(fd.file) else {
            continue;
        };
        let OpenTarget::Pidfd { pid, .. } = o.target else {
            continue;
        };
        if !ours(pid) {
            continue;
        }
        let r = t.call(
            libc::SYS_pidfd_open,
            &[pid as u64, flags_of(o)],
            &format!("fd {}: opening a pidfd of pid {pid}", fd.fd),
        )?;
        let cloexec = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
        t.queue(Call::new(
            libc::SYS_dup3,
            &[r, fd.fd as u64, cloexec as u64],
            format!("fd {}: placing the pidfd of pid {pid}", fd.fd),
        ))?;
        t.queue(Call::new(
            libc::SYS_close,
            &[r],
            "closing a temporary pidfd".into(),
        ))?;
    }
    Ok(())
}
