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

use crate::error::{Context, Error, Result};
use crate::model::TreeFile;
use crest_image::Writer;
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
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

fn cpath(rel: &str) -> Result<CString> {
    CString::new(rel).map_err(|_| Error::Invalid(format!("tmpfs path with a NUL byte: {rel:?}")))
}

/// A rustix call's result, with what crest was doing.
fn os<T>(r: rustix::io::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| crest_sys::Error::io(what(), e.into()).into())
}

fn timestamps(a: (i64, i64), m: (i64, i64)) -> Timestamps {
    let t = |(tv_sec, tv_nsec): (i64, i64)| Timespec { tv_sec, tv_nsec };
    Timestamps {
        last_access: t(a),
        last_modification: t(m),
    }
}

/// Recreates `files` in the new tmpfs `mnt`; regular files with data to
/// come stay open in `data`.
pub fn restore_files(
    mnt: &OwnedFd,
    files: &[TreeFile],
    data: &mut HashMap<u32, Data>,
) -> Result<()> {
    for f in files {
        let rel = if f.path.is_empty() {
            "."
        } else {
            f.path.as_str()
        };
        let p = cpath(rel)?;
        let what = || format!("tmpfs file {rel}");
        match f.mode & libc::S_IFMT {
            libc::S_IFDIR if f.path.is_empty() => {}
            libc::S_IFDIR => os(
                rustix::fs::mkdirat(mnt, &p, Mode::from_raw_mode(0o700)),
                what,
            )?,
            libc::S_IFLNK => {
                let t = CString::new(f.target.as_str())
                    .map_err(|_| Error::Invalid(format!("symlink {rel}: NUL in its target")))?;
                os(rustix::fs::symlinkat(&t, mnt, &p), what)?;
            }
            libc::S_IFREG => {
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
                let fd = os(
                    rustix::fs::openat(mnt, &p, flags, Mode::from_raw_mode(0o600)),
                    what,
                )?;
                os(rustix::fs::ftruncate(&fd, f.size), what)?;
                if f.data != 0 {
                    data.insert(f.data, (fd, f.atime, f.mtime));
                }
            }
            _ => {
                let kind = FileType::from_raw_mode(f.mode);
                let mode = Mode::from_raw_mode(0o600);
                os(rustix::fs::mknodat(mnt, &p, kind, mode, f.rdev), what)?;
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
        let p = cpath(rel)?;
        let what = || format!("tmpfs file {rel}: owner, mode and times");
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        // An id of -1 would mean "unchanged" to the kernel: left as it is.
        let uid = (f.uid != u32::MAX).then(|| Uid::from_raw(f.uid));
        let gid = (f.gid != u32::MAX).then(|| Gid::from_raw(f.gid));
        os(rustix::fs::chownat(mnt, &p, uid, gid, nofollow), what)?;
        if f.mode & libc::S_IFMT != libc::S_IFLNK {
            let mode = Mode::from_raw_mode(f.mode & 0o7777);
            os(rustix::fs::chmodat(mnt, &p, mode, AtFlags::empty()), what)?;
        }
        let ts = timestamps(f.atime, f.mtime);
        os(rustix::fs::utimensat(mnt, &p, &ts, nofollow), what)?;
    }
    Ok(())
}

/// A recreated file whose data is to come, and its times to set after.
pub type Data = (OwnedFd, (i64, i64), (i64, i64));

/// Sets the times of the files written (writing changed them).
pub fn finish_data(data: HashMap<u32, Data>) -> Result<()> {
    for (fd, a, m) in data.into_values() {
        os(rustix::fs::futimens(&fd, &timestamps(a, m)), || {
            "setting the times of a tmpfs file".into()
        })?;
    }
    Ok(())
}

/// Writes `bytes` at `offset` of a recreated file.
pub fn write_at(fd: &OwnedFd, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut off = 0;
    while off < bytes.len() {
        let n = os(
            rustix::io::pwrite(fd, &bytes[off..], offset + off as u64),
            || format!("writing {} bytes of a tmpfs file at {offset}", bytes.len()),
        )?;
        if n == 0 {
            return Err(Error::msg(format!(
                "writing {} bytes of a tmpfs file at {offset}: the file takes no more",
                bytes.len()
            )));
        }
        off += n;
    }
    Ok(())
}
