//! Namespaces: descriptors on them, joining them (setns), and running a
//! piece of work inside another process's namespaces on a thread of its
//! own (so crest's other threads stay where they are).

use crate::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A descriptor on namespace `kind` ("uts", "ipc", "pid", …) of `pid`.
pub fn open(pid: i32, kind: &str) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/{kind}\0");
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os(format!(
            "opening {}",
            path.trim_end_matches('\0')
        )));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the namespace `fd` refers to
/// (`nstype`: its CLONE_NEW* flag, or 0 for any).
pub fn setns(fd: &OwnedFd, nstype: i32) -> Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::setns(fd.as_raw_fd(), nstype) } != 0 {
        return Err(Error::last_os(format!("setns (type {nstype:#x})")));
    }
    Ok(())
}

/// Runs `f` on a new thread that first joins namespace `kind` of `pid`
/// (for kinds a single thread may join: uts, ipc, net, cgroup, time —
/// not mnt or user, which need an unshared or single-threaded caller).
/// The thread ends with `f`.
pub fn run_in<T: Send>(
    pid: i32,
    kind: &str,
    nstype: i32,
    f: impl FnOnce() -> T + Send,
) -> Result<T> {
    let fd = open(pid, kind)?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            setns(&fd, nstype).map_err(|e| {
                Error::io(
                    format!("joining the {kind} namespace of pid {pid}"),
                    std::io::Error::from_raw_os_error(e.errno().unwrap_or(libc::EINVAL)),
                )
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::io(
                "a namespace worker thread panicked",
                std::io::Error::other("panic"),
            ))
        })
    })
}

/// Host and domain name of the calling thread's UTS namespace.
pub fn uts_names() -> Result<(String, String)> {
    let [_, node, ..] = crate::process::uname()?;
    // SAFETY: utsname is plain old data; zeroed is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(Error::last_os("uname"));
    }
    let b: Vec<u8> = u
        .domainname
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((node, String::from_utf8_lossy(&b).into_owned()))
}
