//! Filesystem names of AF_UNIX sockets whose file is gone.
//!
//! A socket bound to a path keeps that name (getsockname, /proc/net/unix)
//! after its file is unlinked, its directory removed, or another file put
//! at the path: the kernel holds the old, now nameless, socket inode.
//! Binding the restored socket at the real path would create a file there
//! (or fail, when the directory is gone or the path is taken).  Instead a
//! short-lived child of crest, in a mount namespace of its own, mounts an
//! empty tmpfs on the deepest existing directory of the path, makes the
//! missing directories and binds the socket there.  When the child exits
//! its namespace goes; the socket keeps its name and its (now
//! unreachable) inode, and nothing appears on the real filesystem: the
//! same state as at the dump.

use crate::error::{Error, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Binds `fd` to the filesystem name `name` without creating any file
/// visible outside crest.
pub fn bind_detached(fd: &OwnedFd, name: &[u8]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(name));
    let shown = path.display().to_string();
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("socket name {shown} has no directory")))?;
    // The deepest existing ancestor, and the directories to make under it.
    let mut base: PathBuf = dir.to_path_buf();
    let mut missing: Vec<PathBuf> = Vec::new();
    while !base.is_dir() {
        missing.push(base.clone());
        base = match base.parent() {
            Some(p) => p.to_path_buf(),
            None => return Err(Error::msg(format!("no directory of {shown} exists"))),
        };
    }
    missing.reverse();
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid(format!("socket name with a NUL byte: {shown}")))
    };
    let base_c = c(&base)?;
    let missing_c: Vec<CString> = missing.iter().map(|p| c(p)).collect::<Result<_>>()?;
    let addr = crate::net::unix::sockaddr_un(name)?;
    let raw = fd.as_raw_fd();
    // SAFETY: fork; the child makes only raw syscalls on data prepared
    // above (no allocation, no locks) and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(crest_sys::Error::last_os("fork for a detached socket bind").into());
    }
    if child == 0 {
        // SAFETY: raw syscalls with valid pointers; see above.
        unsafe {
            let step = |ok: bool, n: i32| {
                if !ok {
                    libc::_exit(n);
                }
            };
            step(libc::unshare(libc::CLONE_NEWNS) == 0, 10);
            step(
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0,
                11,
            );
            step(
                libc::mount(
                    c"crest".as_ptr(),
                    base_c.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    c"mode=0755,size=64k".as_ptr().cast(),
                ) == 0,
                12,
            );
            for m in &missing_c {
                step(libc::mkdir(m.as_ptr(), 0o755) == 0, 13);
            }
            step(
                libc::bind(raw, (&addr.0 as *const libc::sockaddr_un).cast(), addr.1) == 0,
                14,
            );
            libc::_exit(0);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(child, &mut st, 0) } != child {
        return Err(crest_sys::Error::last_os("waiting for the detached socket bind").into());
    }
    let step = match (libc::WIFEXITED(st), libc::WEXITSTATUS(st)) {
        (true, 0) => return Ok(()),
        (true, 10) => "unshare(CLONE_NEWNS)",
        (true, 11) => "making the mounts private",
        (true, 12) => "mounting a tmpfs",
        (true, 13) => "making the missing directories",
        (true, 14) => "bind",
        _ => "the helper process died",
    };
    Err(Error::msg(format!(
        "binding the socket to {shown} (whose file was deleted) in a private mount namespace: \
         {step} failed"
    )))
}
