//! Opening an inode by its file handle (open_by_handle_at).

use crate::{Error, Result};
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

/// Opens (O_PATH, not following a final symlink) the inode with file
/// handle (`htype`, `handle`) on the filesystem mounted at `mount_point`.
///
/// The mount is named by the working directory of a thread of crest's
/// with its own fs struct (open_by_handle_at takes AT_FDCWD), not by a
/// descriptor: the kernel does not accept an O_PATH descriptor there, and
/// opening the mount point for reading would be an event for the
/// program's fanotify marks and inotify watches on it.
pub fn open_by_handle(mount_point: &str, htype: i32, handle: &[u8]) -> Result<OwnedFd> {
    let dir = CString::new(mount_point).map_err(|_| Error::parse(mount_point, "NUL byte"))?;
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; },
    // in a u32 buffer for its alignment.
    let mut fh = vec![0u32; 2 + handle.len().div_ceil(4)];
    fh[0] = handle.len() as u32;
    fh[1] = htype as u32;
    // SAFETY: the buffer has room for the header and the handle bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            handle.as_ptr(),
            fh.as_mut_ptr().add(2).cast::<u8>(),
            handle.len(),
        )
    };
    let r = std::thread::scope(|s| {
        s.spawn(|| -> Result<OwnedFd> {
            // SAFETY: unshare(CLONE_FS) gives this thread its own cwd; the
            // rest of crest keeps its own.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err(Error::last_os("unshare(CLONE_FS)"));
            }
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
                return Err(Error::last_os(format!("chdir {mount_point}")));
            }
            // SAFETY: open_by_handle_at with a valid struct file_handle.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_open_by_handle_at,
                    libc::AT_FDCWD,
                    fh.as_ptr(),
                    libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                )
            };
            if r < 0 {
                return Err(Error::last_os(format!(
                    "open_by_handle_at on the mount at {mount_point}"
                )));
            }
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
        })
        .join()
    });
    r.map_err(|_| Error::parse(mount_point, "the open_by_handle_at thread panicked"))?
}
