//! pidfds: stable handles on processes, and stealing their descriptors.

use crate::{Error, Result};
use libc::pid_t;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Opens a pidfd for `pid`.
pub fn open(pid: pid_t) -> Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(Error::last_os(format!("pidfd_open({pid})")));
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Duplicates descriptor `fd` of the process behind `pidfd` into crest:
/// the copy shares the open file description with the target's fd.
pub fn getfd(pidfd: &OwnedFd, pid: pid_t, fd: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(Error::last_os(format!(
            "pidfd_getfd of fd {fd} of pid {pid}"
        )));
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// A copy in crest of descriptor `fd` of process `pid` (the same open file
/// description): pidfd_open, then pidfd_getfd.
pub fn copy_fd(pid: pid_t, fd: i32) -> Result<OwnedFd> {
    getfd(&open(pid)?, pid, fd)
}

/// Sends signal `sig` to the process behind `pidfd` (never to another
/// process that got its pid since).
pub fn send_signal(pidfd: &OwnedFd, sig: i32) -> Result<()> {
    // SAFETY: plain syscall with integer arguments (no siginfo).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(Error::last_os(format!("pidfd_send_signal({sig})")));
    }
    Ok(())
}

/// How often [`wait_reaped`] looks again on kernels that do not report a
/// process being reaped on its pidfd (before Linux 6.9).
const RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits up to `timeout` until process `pid` has exited (is a zombie or
/// gone): its pidfd becomes readable then.  Returns whether it did.
pub fn wait_exited(pid: pid_t, timeout: std::time::Duration) -> Result<bool> {
    let fd = match open(pid) {
        Ok(fd) => fd,
        Err(e) if e.errno() == Some(libc::ESRCH) => return Ok(true),
        Err(e) => return Err(e),
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // SAFETY: poll on one valid pollfd we own.
        let r = unsafe { libc::poll(&mut p, 1, millis(left)) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 && left.is_zero() {
            return Ok(false);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(Error::last_os(format!("waiting for pid {pid} to exit")));
        }
    }
}

/// Waits up to `timeout` until process `pid` is gone: exited and reaped
/// by its parent, so that its pid is free.  Returns whether it is.
pub fn wait_reaped(pid: pid_t, timeout: std::time::Duration) -> Result<bool> {
    let fd = match open(pid) {
        Ok(fd) => fd,
        Err(e) if e.errno() == Some(libc::ESRCH) => return Ok(true),
        Err(e) => return Err(e),
    };
    // An epoll set asking for no event reports only a hang-up, which a
    // pidfd signals once its process has been reaped.
    // SAFETY: plain syscall; the descriptor is owned below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(Error::last_os("epoll_create1"));
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: plain syscall on two descriptors we own and a valid event.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) } != 0
    {
        return Err(Error::last_os(format!("epoll_ctl on the pidfd of {pid}")));
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if !crate::process::exists(pid) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // SAFETY: epoll_wait into one valid event.
        let r = unsafe { libc::epoll_wait(ep.as_raw_fd(), &mut ev, 1, millis(left.min(RECHECK))) };
        if r > 0 {
            return Ok(true);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(Error::last_os(format!(
                "waiting for pid {pid} to be reaped"
            )));
        }
    }
}

/// A timeout for poll(2)/epoll_wait(2), rounded up to whole milliseconds.
fn millis(d: std::time::Duration) -> i32 {
    d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
}
