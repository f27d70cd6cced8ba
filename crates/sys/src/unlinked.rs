//! Creating a file that must exist only as an open, unlinked file (whose
//! descriptor still reads "PATH (deleted)"), with no instant at which a
//! killed crest would leave its name behind.
//!
//! The name has to exist for a moment: the kernel names an open file by
//! the dentry it was opened through, so the file is created under PATH
//! and unlinked.  Those two calls run in a short-lived child that shares
//! crest's descriptor table (clone with CLONE_FILES, no CLONE_VM): if
//! crest is killed meanwhile, the child still unlinks the name, and only
//! then exits.

use crate::{Error, Result};
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

/// Creates PATH exclusively with `mode`, read-write, and unlinks it; the
/// open descriptor is returned.
pub fn create_unlinked(path: &str, mode: u32) -> Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| Error::parse(path, "path with a NUL byte"))?;
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::last_os("pipe2"));
    }
    // SAFETY: both are new descriptors owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    use std::os::fd::AsRawFd;
    let (rfd, wfd) = (r.as_raw_fd(), w.as_raw_fd());
    // SAFETY: a fork-like clone sharing the descriptor table; the child
    // only makes raw syscalls (open, unlink, write, exit), which are
    // async-signal-safe, on data prepared before the clone.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_FILES | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: see above; the child never returns into Rust code.
        unsafe {
            let fd = libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                (mode & 0o7777) as libc::c_uint,
            );
            let mut msg = [0i32; 2];
            if fd < 0 {
                msg[1] = *libc::__errno_location();
            } else {
                msg[0] = fd;
                if libc::unlink(c.as_ptr()) < 0 {
                    msg[1] = *libc::__errno_location();
                }
            }
            libc::write(wfd, msg.as_ptr().cast(), 8);
            libc::_exit(0);
        }
    }
    if pid < 0 {
        return Err(Error::last_os(format!("clone to create {path}")));
    }
    // The table is shared: the write end stays open until the child has
    // written and exited, then the report is read.
    let mut st = 0;
    // SAFETY: reaps the child made above.
    unsafe { libc::waitpid(pid as i32, &mut st, libc::__WALL) };
    drop(w);
    let mut msg = [0i32; 2];
    // SAFETY: reads at most 8 bytes into `msg`.
    let n = unsafe { libc::read(rfd, msg.as_mut_ptr().cast(), 8) };
    if n != 8 {
        return Err(Error::parse(path, "the helper creating it did not report"));
    }
    if msg[1] != 0 {
        // The file, if made, was opened in the shared table: close it.
        if msg[0] > 0 {
            // SAFETY: the descriptor the child opened in our table.
            drop(unsafe { OwnedFd::from_raw_fd(msg[0]) });
        }
        return Err(Error::io(
            format!("creating {path}"),
            std::io::Error::from_raw_os_error(msg[1]),
        ));
    }
    // SAFETY: the child opened it in our (shared) table; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(msg[0]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_and_gone() {
        let dir = std::env::temp_dir().join(format!("crest-unlinked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let fd = create_unlinked(p.to_str().unwrap(), 0o640).unwrap();
        assert!(!p.exists());
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(link.to_str().unwrap(), format!("{} (deleted)", p.display()));
        std::fs::write(&p, b"x").unwrap();
        let e = create_unlinked(p.to_str().unwrap(), 0o640).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
