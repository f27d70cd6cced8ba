//! Directories, FIFOs and device nodes deleted while held open (as an
//! open descriptor or as the cwd).
//!
//! Such a node has no name any more, and /proc/PID/fd shows its old path
//! with " (deleted)".  A deleted directory is empty (rmdir succeeded) and
//! a FIFO is only a rendezvous point with a buffer, so restore can make a
//! node like it at the old path, open it, and remove the name again: the
//! process gets a node of the same kind, mode and owner, deleted, with
//! the same path shown.  Every description of one node shares the one
//! recreated node.  Devices are recreated only when stateless (those
//! crest reopens by path anyway); nodes under /proc, /sys or /dev/pts
//! cannot be made and are refused (a cwd in the /proc directory of a
//! process that died, for example).

use crate::error::{Context, Error, Result};
use crate::model::DeletedNode;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The node `link` (a /proc/PID/fd or cwd link ending in " (deleted)")
/// refers to, or why it cannot be restored.
pub fn collect(
    link: &str,
    md: &std::fs::Metadata,
    stateless_device: bool,
) -> std::result::Result<DeletedNode, String> {
    let path = link.trim_end_matches(" (deleted)");
    let ft = md.file_type();
    let what = if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else {
        "device node"
    };
    for fs in ["/proc/", "/sys/", "/dev/pts/"] {
        if path.starts_with(fs) || path == fs.trim_end_matches('/') {
            return Err(format!(
                "{link}: a deleted {what} under {fs} cannot be made again (not supported)"
            ));
        }
    }
    if (ft.is_char_device() || ft.is_block_device()) && !stateless_device {
        return Err(format!(
            "{link}: device {}:{} deleted while open is not supported",
            libc::major(md.rdev()),
            libc::minor(md.rdev())
        ));
    }
    Ok(DeletedNode {
        path: path.to_string(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
    })
}

/// The nodes made during a restore, by path: crest holds each open (as
/// O_PATH) until every description of it is open, then removes its name.
#[derive(Default)]
pub struct Nodes {
    made: HashMap<String, (OwnedFd, Option<String>)>,
}

fn cstr(p: &str) -> Result<CString> {
    CString::new(p).map_err(|_| Error::Invalid(format!("path with a NUL byte: {p:?}")))
}

impl Nodes {
    /// A new open file description (flags `flags`) of the node `n`, made
    /// the first time.
    pub fn open(&mut self, n: &DeletedNode, flags: u32) -> Result<OwnedFd> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.made.entry(n.path.clone()) {
            e.insert(make(n)?);
        }
        let (keep, _) = &self.made[&n.path];
        let via = cstr(&format!("/proc/self/fd/{}", keep.as_raw_fd()))?;
        let fifo = n.mode & libc::S_IFMT == libc::S_IFIFO;
        let mut fl = (flags as i32)
            & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY)
            | libc::O_CLOEXEC;
        // A FIFO end opens at once only when the other end is open: hold
        // a reader meanwhile, then set the real flags.
        let _reader = if fifo {
            fl |= libc::O_NONBLOCK;
            // SAFETY: a valid C string.
            let r = unsafe {
                libc::open(
                    via.as_ptr(),
                    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            // SAFETY: a fresh descriptor (or -1, not wrapped).
            (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r) })
        } else {
            None
        };
        // SAFETY: a valid C string.
        let fd = unsafe { libc::open(via.as_ptr(), fl) };
        if fd < 0 {
            return Err(
                crest_sys::Error::last_os(format!("opening the recreated {}", n.path)).into(),
            );
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if fifo {
            // SAFETY: F_SETFL on our descriptor.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags as i32) } < 0 {
                return Err(
                    crest_sys::Error::last_os(format!("setting the flags of {}", n.path)).into(),
                );
            }
        }
        Ok(fd)
    }

    /// Removes the names of the recreated nodes.
    pub fn remove_all(&mut self) -> Result<()> {
        for (_, name) in self.made.values_mut() {
            if let Some(p) = name.take() {
                remove(&p).context(|| format!("removing the recreated {p} again"))?;
            }
        }
        Ok(())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, name) in self.made.values_mut() {
            if let Some(p) = name.take() {
                let _ = remove(&p);
            }
        }
    }
}

fn remove(p: &str) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(p),
        _ => std::fs::remove_file(p),
    }
}

/// Makes the node at its path (or, when that name is taken, at a name
/// next to it) and opens it O_PATH.
fn make(n: &DeletedNode) -> Result<(OwnedFd, Option<String>)> {
    let candidates = [
        n.path.clone(),
        format!("{}.crest-{}", n.path, std::process::id()),
    ];
    let perm = n.mode & 0o7777;
    let mut last = None;
    for p in candidates {
        let c = cstr(&p)?;
        // SAFETY: valid C strings; plain syscalls.
        let r = unsafe {
            match n.mode & libc::S_IFMT {
                libc::S_IFDIR => libc::mkdir(c.as_ptr(), perm),
                libc::S_IFIFO => libc::mkfifo(c.as_ptr(), perm),
                kind => libc::mknod(c.as_ptr(), kind | perm, n.rdev),
            }
        };
        if r != 0 {
            last = Some(std::io::Error::last_os_error());
            continue;
        }
        // From here on the name is ours: removed on any error.
        let undo = |e: Error| {
            let _ = remove(&p);
            e
        };
        // SAFETY: a valid C string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(undo(
                crest_sys::Error::last_os(format!("opening the recreated {p}")).into(),
            ));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::os::unix::fs::lchown(&p, Some(n.uid), Some(n.gid))
            .map_err(|e| undo(Error::msg(format!("chown of the recreated {p}: {e}"))))?;
        // chown may clear set-id bits, and mkdir/mkfifo applied the umask.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(perm))
            .map_err(|e| undo(Error::msg(format!("chmod of the recreated {p}: {e}"))))?;
        return Ok((fd, Some(p)));
    }
    Err(Error::msg(format!(
        "recreating the deleted {} for the restore: {}",
        n.path,
        last.map_or_else(|| "no name".to_string(), |e| e.to_string())
    )))
}
