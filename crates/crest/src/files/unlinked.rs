//! Regular files unlinked while open (and O_TMPFILE files).
//!
//! Dump saves only the file's data extents (SEEK_DATA / SEEK_HOLE), so a
//! sparse file's holes stay holes, plus its owner, mode and times.  Every
//! open file description of one such file (in one process or several)
//! refers to the first one's object (`same_as`): restore recreates the
//! file once and opens each description on it, so a write through one is
//! read through the others.
//!
//! Restore creates the file at its old name and unlinks it once every
//! description is open, so /proc/PID/fd shows the same "PATH (deleted)";
//! an O_TMPFILE file is made again with O_TMPFILE in its directory, so
//! that it stays linkable (linkat) as it was.

use crate::error::{Context, Error, Result};
use crate::model::UnlinkedMeta;
use crest_image::Writer;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

/// The O_TMPFILE bit without O_DIRECTORY (the kernel's __O_TMPFILE).
const TMPFILE_BIT: u32 = (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32;

/// What dump records of an unlinked file besides its content.
pub fn meta(md: &std::fs::Metadata, flags: u32, same_as: Option<u32>) -> UnlinkedMeta {
    UnlinkedMeta {
        uid: md.uid(),
        gid: md.gid(),
        atime_ns: md.atime() as i128 * 1_000_000_000 + md.atime_nsec() as i128,
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        same_as,
        tmpfile: flags & TMPFILE_BIT != 0,
    }
}

/// The open flags a recreated file's description is opened with.
pub fn open_flags(flags: u32) -> u32 {
    flags & !(libc::O_TMPFILE as u32)
}

/// Writes the data extents of the file at `path` (`size` bytes long) as
/// FILE_DATA records of `object`: holes are left out.
pub fn write_extents<W: Write>(
    object: u32,
    path: &str,
    size: u64,
    buf: &mut [u8],
    out: &mut Writer<W>,
) -> Result<()> {
    let f = File::open(path).context(|| format!("reopening the unlinked file {path}"))?;
    let mut off = 0u64;
    while off < size {
        // SAFETY: lseek on a descriptor we own.
        let start = unsafe { libc::lseek(f.as_raw_fd(), off as i64, libc::SEEK_DATA) };
        if start < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole past `off`
            }
            return Err(Error::Io(e)).context(|| format!("SEEK_DATA in {path}"));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), start, libc::SEEK_HOLE) };
        let end = if hole < start { size } else { hole as u64 }.min(size);
        let mut pos = start as u64;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos)
                .context(|| format!("reading {path} at {pos}"))?;
            out.write_file_data(object as u64, pos, &buf[..n])?;
            pos += n as u64;
        }
        off = end.max(off + 1);
    }
    Ok(())
}

/// One recreated file: crest's descriptor on it and the name to unlink
/// (none for an O_TMPFILE file).
struct Made {
    file: File,
    name: Option<String>,
    /// Owner, mode and times applied (after the content was written).
    finished: bool,
}

/// The files recreated during a restore, by the object that owns their
/// content.  Names left on error are removed on drop.
#[derive(Default)]
pub struct Recreated {
    files: HashMap<u32, Made>,
}

impl Recreated {
    /// The file of object `object` (first description of the file),
    /// created empty the first time.
    pub fn get(
        &mut self,
        object: u32,
        path: &str,
        mode: u32,
        meta: Option<&UnlinkedMeta>,
    ) -> Result<&File> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.files.entry(object) {
            e.insert(create(object, path, mode, meta)?);
        }
        Ok(&self.files[&object].file)
    }

    /// Writes content at `offset`.
    pub fn write(
        &mut self,
        object: u32,
        path: &str,
        mode: u32,
        meta: Option<&UnlinkedMeta>,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let f = self.get(object, path, mode, meta)?;
        f.write_all_at(data, offset)
            .context(|| format!("writing the content of unlinked file {path}"))
    }

    /// Sizes the file (the content is in), gives it its mode, owner and
    /// times, and returns the path to open a new description of it by.
    pub fn finish(
        &mut self,
        object: u32,
        path: &str,
        mode: u32,
        size: u64,
        meta: Option<&UnlinkedMeta>,
    ) -> Result<String> {
        self.get(object, path, mode, meta)?;
        let m = self.files.get_mut(&object).expect("created above");
        if !m.finished {
            m.file.set_len(size).context(|| format!("sizing {path}"))?;
            let fd = m.file.as_raw_fd();
            // SAFETY: fchmod on a descriptor we own.
            if unsafe { libc::fchmod(fd, mode & 0o7777) } != 0 {
                return Err(crest_sys::Error::last_os(format!("chmod of {path}")).into());
            }
            if let Some(meta) = meta {
                // SAFETY: fchown on a descriptor we own.
                if unsafe { libc::fchown(fd, meta.uid, meta.gid) } != 0 {
                    return Err(crest_sys::Error::last_os(format!("chown of {path}")).into());
                }
                if mode & 0o6000 != 0 {
                    // chown clears set-id bits: give them back.
                    // SAFETY: as above.
                    unsafe { libc::fchmod(fd, mode & 0o7777) };
                }
                let ts = |ns: i128| libc::timespec {
                    tv_sec: ns.div_euclid(1_000_000_000) as i64,
                    tv_nsec: ns.rem_euclid(1_000_000_000) as i64,
                };
                let times = [ts(meta.atime_ns), ts(meta.mtime_ns)];
                // SAFETY: futimens reads two timespecs.
                if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
                    return Err(
                        crest_sys::Error::last_os(format!("setting the times of {path}")).into(),
                    );
                }
            }
            m.finished = true;
        }
        Ok(format!("/proc/self/fd/{}", m.file.as_raw_fd()))
    }

    /// Removes the names of the recreated files, once every description
    /// of them is open.
    pub fn unlink_all(&mut self) -> Result<()> {
        for m in self.files.values_mut() {
            if let Some(p) = m.name.take() {
                std::fs::remove_file(&p).context(|| format!("unlinking {p}"))?;
            }
        }
        Ok(())
    }
}

impl Recreated {
    /// Closes crest's descriptors of the recreated files (removing any
    /// name still left), once every process holds its own.
    pub fn clear(&mut self) {
        for m in self.files.values_mut() {
            if let Some(p) = m.name.take() {
                let _ = std::fs::remove_file(p);
            }
        }
        self.files.clear();
    }
}

impl Drop for Recreated {
    fn drop(&mut self) {
        for m in self.files.values_mut() {
            if let Some(p) = m.name.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn create(object: u32, path: &str, mode: u32, meta: Option<&UnlinkedMeta>) -> Result<Made> {
    let dir = std::path::Path::new(path)
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_else(|| "/".into());
    if meta.is_some_and(|m| m.tmpfile) {
        let r = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .mode(mode & 0o7777)
            .open(&dir);
        if let Ok(file) = r {
            return Ok(Made {
                file,
                name: None,
                finished: false,
            });
        }
    }
    let candidates = [
        path.to_string(),
        format!("{path}.crest-{}-{object}", std::process::id()),
    ];
    let mut last = None;
    for p in candidates {
        // Created and unlinked by a helper that finishes even if crest is
        // killed: no name is ever left behind.  New descriptions are
        // opened through /proc/self/fd, which names it "PATH (deleted)".
        match crest_sys::unlinked::create_unlinked(&p, mode) {
            Ok(fd) => {
                return Ok(Made {
                    file: File::from(fd),
                    name: None,
                    finished: false,
                })
            }
            Err(e) => last = Some((p, e)),
        }
    }
    let (p, e) = last.expect("two candidates tried");
    Err(Error::msg(format!(
        "recreating unlinked file {p} for the restore: {e}"
    )))
}
