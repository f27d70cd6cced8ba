//! The whole content of a tmpfs mounted in a mount namespace recreated
//! whole: files, directories, symlinks, FIFOs and device nodes with
//! their modes, owners and times; regular files' data extents (holes
//! stay holes) as FILE_DATA records of object ids from
//! [`super::DATA_BASE`], streamed from the mount at the dump and into
//! the new tmpfs at restore.
//!
//! Dump walks the mount through /proc/PID/root, staying on its device
//! (a mount point below it is recorded as a plain directory: the one
//! under the mount is hidden), and reads the data the same way while the
//! tree is still frozen.

#![allow(clippy::undocumented_unsafe_blocks)] // each block has its SAFETY line above the call it wraps

use crate::error::{Context, Error, Result};
use crate::model::TreeFile;
use crest_image::Writer;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Mutex;

/// Clones of the saved tmpfs mounts of the dump under way, and the
/// files whose data is to be written: (object id, clone, path, size).
static PENDING: Mutex<Vec<(u32, String, String, u64)>> = Mutex::new(Vec::new());

/// The files of the tmpfs mounted at `mount_point` in the mount
/// namespace of `pid`; `next` numbers the data objects.
pub fn collect(pid: i32, mount_point: &str, next: &mut u32) -> Result<Vec<TreeFile>> {
    let base = format!("/proc/{pid}/root{mount_point}");
    let dev = std::fs::symlink_metadata(&base)
        .context(|| format!("pid {pid}: stat of the tmpfs at {mount_point}"))?
        .dev();
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    let mut pending = Vec::new();
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            base.clone()
        } else {
            format!("{base}/{rel}")
        };
        let md = std::fs::symlink_metadata(&path)
            .context(|| format!("tmpfs at {mount_point}: stat {rel}"))?;
        let ft = md.mode() & libc::S_IFMT;
        if md.dev() != dev {
            // A mount point below: the directory under it is hidden,
            // recreated plain (its mount comes on top).
            out.push(TreeFile {
                path: rel,
                mode: libc::S_IFDIR | 0o755,
                ..Default::default()
            });
            continue;
        }
        let mut f = TreeFile {
            path: rel.clone(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            atime: (md.atime(), md.atime_nsec()),
            mtime: (md.mtime(), md.mtime_nsec()),
            rdev: md.rdev(),
            ..Default::default()
        };
        match ft {
            libc::S_IFDIR => {
                let mut names: Vec<String> = std::fs::read_dir(&path)
                    .context(|| format!("tmpfs at {mount_point}: listing {rel}"))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                // Popped in name order.
                for n in names.into_iter().rev() {
                    stack.push(if rel.is_empty() {
                        n
                    } else {
                        format!("{rel}/{n}")
                    });
                }
            }
            libc::S_IFLNK => {
                f.target = std::fs::read_link(&path)
                    .context(|| format!("tmpfs at {mount_point}: readlink {rel}"))?
                    .to_string_lossy()
                    .into_owned();
            }
            libc::S_IFREG if md.size() > 0 => {
                f.data = super::DATA_BASE + *next;
                *next += 1;
                pending.push((f.data, base.clone(), rel.clone(), md.size()));
            }
            _ => {}
        }
        out.push(f);
    }
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(pending);
    Ok(out)
}

/// Writes the data of the files collected (then forgets them).
pub fn write_pending<W: Write>(out: &mut Writer<W>) -> Result<()> {
    let list = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    let mut buf = vec![0u8; 1 << 20];
    for (object, base, rel, size) in list {
        let path = format!("{base}/{rel}");
        crate::files::unlinked::write_extents(object, &path, size, &mut buf, out)
            .context(|| format!("saving tmpfs file {rel}"))?;
    }
    Ok(())
}

/// Forgets what a failed dump collected.
pub fn forget() {
    PENDING.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

fn cpath(base: &OwnedFd, rel: &str) -> Result<CString> {
    let _ = base;
    CString::new(rel).map_err(|_| Error::Invalid(format!("tmpfs path with a NUL byte: {rel:?}")))
}

fn check(r: i32, what: impl FnOnce() -> String) -> Result<()> {
    if r != 0 {
        return Err(crest_sys::Error::last_os(what()).into());
    }
    Ok(())
}

/// Recreates `files` in the new tmpfs `mnt`; regular files with data to
/// come stay open in `data`.
pub fn restore_files(
    mnt: &OwnedFd,
    files: &[TreeFile],
    data: &mut HashMap<u32, Data>,
) -> Result<()> {
    let d = mnt.as_raw_fd();
    for f in files {
        let rel = if f.path.is_empty() {
            "."
        } else {
            f.path.as_str()
        };
        let p = cpath(mnt, rel)?;
        let what = || format!("tmpfs file {rel}");
        match f.mode & libc::S_IFMT {
            libc::S_IFDIR if f.path.is_empty() => {}
            libc::S_IFDIR => {
                // SAFETY: NUL-terminated path below a descriptor we own.
                check(unsafe { libc::mkdirat(d, p.as_ptr(), 0o700) }, what)?;
            }
            libc::S_IFLNK => {
                let t = CString::new(f.target.as_str())
                    .map_err(|_| Error::Invalid(format!("symlink {rel}: NUL in its target")))?;
                // SAFETY: NUL-terminated strings.
                check(unsafe { libc::symlinkat(t.as_ptr(), d, p.as_ptr()) }, what)?;
            }
            libc::S_IFREG => {
                // SAFETY: NUL-terminated path; the result is checked.
                let fd = unsafe {
                    libc::openat(
                        d,
                        p.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd < 0 {
                    return Err(crest_sys::Error::last_os(what()).into());
                }
                // SAFETY: a new descriptor we own.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: plain syscall on it.
                check(
                    unsafe { libc::ftruncate(fd.as_raw_fd(), f.size as i64) },
                    what,
                )?;
                if f.data != 0 {
                    data.insert(f.data, (fd, f.atime, f.mtime));
                }
            }
            _ => {
                // SAFETY: NUL-terminated path.
                check(
                    unsafe { libc::mknodat(d, p.as_ptr(), f.mode & libc::S_IFMT | 0o600, f.rdev) },
                    what,
                )?;
            }
        }
    }
    // Owners, modes and times once everything exists (directories' times
    // after their entries, so deepest first).
    for f in files.iter().rev() {
        let rel = if f.path.is_empty() {
            "."
        } else {
            f.path.as_str()
        };
        let p = cpath(mnt, rel)?;
        let what = || format!("tmpfs file {rel}: owner, mode and times");
        let nofollow = libc::AT_SYMLINK_NOFOLLOW;
        // SAFETY: NUL-terminated path below a descriptor we own.
        check(
            unsafe { libc::fchownat(d, p.as_ptr(), f.uid, f.gid, nofollow) },
            what,
        )?;
        if f.mode & libc::S_IFMT != libc::S_IFLNK {
            // SAFETY: as above.
            check(
                unsafe { libc::fchmodat(d, p.as_ptr(), f.mode & 0o7777, 0) },
                what,
            )?;
        }
        let ts = [
            libc::timespec {
                tv_sec: f.atime.0,
                tv_nsec: f.atime.1,
            },
            libc::timespec {
                tv_sec: f.mtime.0,
                tv_nsec: f.mtime.1,
            },
        ];
        // SAFETY: as above, with two valid timespecs.
        check(
            unsafe { libc::utimensat(d, p.as_ptr(), ts.as_ptr(), nofollow) },
            what,
        )?;
    }
    Ok(())
}

/// A recreated file whose data is to come, and its times to set after.
pub type Data = (OwnedFd, (i64, i64), (i64, i64));

/// Sets the times of the files written (writing changed them).
pub fn finish_data(data: HashMap<u32, Data>) -> Result<()> {
    for (fd, a, m) in data.into_values() {
        let ts = [
            libc::timespec {
                tv_sec: a.0,
                tv_nsec: a.1,
            },
            libc::timespec {
                tv_sec: m.0,
                tv_nsec: m.1,
            },
        ];
        // SAFETY: futimens on a descriptor we own, two valid timespecs.
        check(
            unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) },
            || "setting the times of a tmpfs file".into(),
        )?;
    }
    Ok(())
}

/// Writes `bytes` at `offset` of a recreated file.
pub fn write_at(fd: &OwnedFd, offset: u64, bytes: &[u8]) -> Result<()> {
    let f = std::mem::ManuallyDrop::new(
        // SAFETY: borrowed for this call only; ManuallyDrop keeps it open.
        unsafe { std::fs::File::from_raw_fd(fd.as_raw_fd()) },
    );
    f.write_all_at(bytes, offset)
        .context(|| format!("writing {} bytes of a tmpfs file at {offset}", bytes.len()))
}
