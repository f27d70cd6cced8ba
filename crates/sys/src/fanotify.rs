//! fanotify groups: creating one and adding marks to it.

use crate::{Error, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// fanotify_init(`flags`, `event_f_flags`): a new group.
pub fn init(flags: u32, event_f_flags: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor.
    let r = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if r < 0 {
        return Err(Error::last_os(format!(
            "fanotify_init(flags {flags:#x}, event_f_flags {event_f_flags:#o})"
        )));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// fanotify_mark(`group`, `flags`, `mask`, AT_FDCWD, `path`).
pub fn mark(group: &OwnedFd, flags: u32, mask: u64, path: &str) -> Result<()> {
    let c = CString::new(path).map_err(|_| Error::parse(path, "path with a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path; the group is a descriptor we own.
    let r =
        unsafe { libc::fanotify_mark(group.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if r < 0 {
        return Err(Error::last_os(format!(
            "fanotify_mark(flags {flags:#x}, mask {mask:#x}) on {path}"
        )));
    }
    Ok(())
}

/// The number of bytes queued for reading on `fd` (FIONREAD).
pub fn queued_bytes(fd: &OwnedFd) -> Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(Error::last_os("FIONREAD"));
    }
    Ok(n.max(0) as usize)
}

/// Sets FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: &OwnedFd) -> Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(Error::last_os("F_SETFD FD_CLOEXEC"));
    }
    Ok(())
}
