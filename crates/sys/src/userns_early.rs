//! A user namespace made before the process that will be in it, and a
//! network namespace it owns; then that process created inside it.
//!
//! A network namespace belongs to the user namespace of whoever made it.
//! crest makes a tree's network namespace before any process of the tree
//! exists (the tree's sockets are made in it first), so when the
//! namespace must belong to the tree's user namespace, that user
//! namespace must exist first too: [`make`] forks a helper that takes
//! the ids of the namespace's owner, unshares a user namespace, waits
//! while the caller writes its maps, unshares a network namespace, and
//! exits once the caller holds descriptors on both.
//!
//! The process that was the first in that user namespace is then made by
//! [`clone_in`]: a short-lived child joins the namespace (setns, which
//! gives it every capability there) and clones the real one with
//! CLONE_PARENT, so that it is the caller's child and every namespace
//! its clone3 makes (PID, mount, …) belongs to the user namespace, as
//! with a clone3 that has CLONE_NEWUSER too.

use crate::process::{clone_with_tids, Forked};
use crate::{Error, Result};
use libc::pid_t;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Descriptors on the new user namespace and the network namespace it owns.
pub struct Made {
    pub user: OwnedFd,
    pub net: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::last_os("pipe2"));
    }
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

/// Reads one i32 from `fd` (EINTR retried); `None` at end of file.
fn read_i32(fd: RawFd) -> Option<i32> {
    let mut v = 0i32;
    loop {
        // SAFETY: reads 4 bytes into a local.
        let n = unsafe { libc::read(fd, (&mut v as *mut i32).cast(), 4) };
        if n == 4 {
            return Some(v);
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Forks the helper: with the effective `owner` ids (uid, gid; host
/// terms) it unshares a user namespace; `maps(pid)` writes its maps from
/// here; then it unshares a network namespace.  The caller must be
/// allowed to take those ids (root) when they are not its own.
pub fn make(owner: (u32, u32), maps: impl FnOnce(pid_t) -> Result<()>) -> Result<Made> {
    let (up_r, up_w) = pipe()?;
    let (down_r, down_w) = pipe()?;
    let (ur, uw, dr) = (up_r.as_raw_fd(), up_w.as_raw_fd(), down_r.as_raw_fd());
    let dw = down_w.as_raw_fd();
    // SAFETY: the child makes only raw syscalls (no allocation) and exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(Error::last_os("fork for a new user namespace"));
    }
    if child == 0 {
        // SAFETY: in the forked child: raw syscalls on locals only.
        unsafe {
            // Only the caller's ends: its end of file tells this one to go.
            libc::close(ur);
            libc::close(dw);
            let say = |v: i32| libc::write(uw, (&v as *const i32).cast(), 4) == 4;
            let err = || *libc::__errno_location();
            let (uid, gid) = owner;
            let mut b = 0i32;
            let failed = libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
                || libc::unshare(libc::CLONE_NEWUSER) != 0;
            let step = if failed { -err() } else { 0 };
            if !say(step) || step != 0 {
                libc::_exit(1);
            }
            // Maps written (or the caller gave up: end of file).
            if libc::read(dr, (&mut b as *mut i32).cast(), 4) != 4 {
                libc::_exit(1);
            }
            let step = if libc::unshare(libc::CLONE_NEWNET) != 0 {
                -err()
            } else {
                0
            };
            if !say(step) || step != 0 {
                libc::_exit(1);
            }
            // Until the caller holds its descriptors.
            libc::read(dr, (&mut b as *mut i32).cast(), 4);
            libc::_exit(0);
        }
    }
    drop(up_w);
    drop(down_r);
    let reap = || {
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), libc::__WALL) };
    };
    let step = |what: &str| -> Result<()> {
        match read_i32(ur) {
            Some(0) => Ok(()),
            Some(e) => Err(Error::io(
                what.to_string(),
                std::io::Error::from_raw_os_error(-e),
            )),
            None => Err(Error::io(
                what.to_string(),
                std::io::Error::from_raw_os_error(libc::ECHILD),
            )),
        }
    };
    let go = || {
        let v = 1i32;
        // SAFETY: writes 4 bytes from a local.
        unsafe { libc::write(down_w.as_raw_fd(), (&v as *const i32).cast(), 4) == 4 }
    };
    let r = (|| -> Result<Made> {
        step(&format!(
            "a helper unsharing a user namespace as uid {} gid {}",
            owner.0, owner.1
        ))?;
        maps(child)?;
        if !go() {
            return Err(Error::last_os("waking the user namespace's helper"));
        }
        step("the helper unsharing a network namespace in its user namespace")?;
        let user = crate::ns::open(child, "user")?;
        let net = crate::ns::open(child, "net")?;
        Ok(Made { user, net })
    })();
    drop(down_w);
    reap();
    r
}

/// Forks a child of the caller (clone3 with `flags` and `tids`, as
/// [`clone_with_tids`]) that is in user namespace `userns` with every
/// capability there, and whose new namespaces belong to it.  The caller
/// must be allowed to join it (CAP_SYS_ADMIN there) and not be a PID
/// namespace's init (CLONE_PARENT).  Returns an errno on failure.
/// Allocation-free on success.
///
/// # Safety
/// As [`clone_with_tids`]: the child may only make async-signal-safe calls.
pub unsafe fn clone_in(
    userns: RawFd,
    tids: &[pid_t],
    flags: u64,
) -> std::result::Result<Forked, i32> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        // SAFETY: reads this thread's errno.
        return Err(unsafe { *libc::__errno_location() });
    }
    // On a table shared with the caller (CLONE_FILES, which the
    // go-between shares too) the pipe is closed by the caller only.
    let shared = flags & libc::CLONE_FILES as u64;
    // SAFETY: the caller keeps to the fork contract; the go-between makes
    // raw syscalls only, then exits.
    let between = match unsafe { clone_with_tids(&[], shared) } {
        // SAFETY: in the go-between: raw syscalls on the caller's prepared
        // data only, then it exits (or returns as the new child).
        Ok(Forked::Child) => unsafe {
            if shared == 0 {
                libc::close(p[0]);
            }
            let say = |v: i32| {
                libc::write(p[1], (&v as *const i32).cast(), 4);
            };
            if libc::setns(userns, libc::CLONE_NEWUSER) != 0 {
                say(-*libc::__errno_location());
                libc::_exit(1);
            }
            match clone_with_tids(tids, flags | libc::CLONE_PARENT as u64) {
                Ok(Forked::Child) => {
                    if shared == 0 {
                        libc::close(p[1]);
                    }
                    return Ok(Forked::Child);
                }
                Ok(Forked::Parent(pid)) => {
                    say(pid);
                    libc::_exit(0);
                }
                Err(e) => {
                    say(-e.errno().unwrap_or(libc::EINVAL));
                    libc::_exit(1);
                }
            }
        },
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => {
            // SAFETY: our own descriptors.
            unsafe {
                libc::close(p[0]);
                libc::close(p[1]);
            }
            return Err(e.errno().unwrap_or(libc::EINVAL));
        }
    };
    // SAFETY: our own descriptors; reaping our own child.
    unsafe {
        // Once the go-between has gone (having written, or not), the write
        // end is closed: the read sees the answer or end of file.
        while libc::waitpid(between, std::ptr::null_mut(), libc::__WALL) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
        libc::close(p[1]);
        let mut v = 0i32;
        let n = loop {
            let n = libc::read(p[0], (&mut v as *mut i32).cast(), 4);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break n;
        };
        libc::close(p[0]);
        match (n, v) {
            (4, v) if v > 0 => Ok(Forked::Parent(v)),
            (4, v) => Err(-v),
            _ => Err(libc::ECHILD),
        }
    }
}

const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;

/// The uid (in the caller's user namespace) of the creator of user
/// namespace `fd` (NS_GET_OWNER_UID).
pub fn owner_uid(fd: &OwnedFd) -> Result<u32> {
    let mut uid: libc::uid_t = 0;
    // SAFETY: the ioctl writes one uid_t into a local.
    if unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_OWNER_UID, &mut uid) } != 0 {
        return Err(Error::last_os("NS_GET_OWNER_UID"));
    }
    Ok(uid)
}
