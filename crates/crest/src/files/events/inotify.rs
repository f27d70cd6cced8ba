//! inotify: the watches of an instance (watch descriptor, mask, and the
//! watched inode, found again by its file handle), recreated with the
//! same watch descriptors.  Watches on files unlinked while open are
//! `crate::files::inotify_deleted`'s.

use super::Refusal;
use crate::error::steal;
use crate::error::{Context, Error, Result};
use crate::model::{InotifyWatch, OpenTarget};
use crest_sys::proc::{self, FdInfo};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The inotify mask bits a watch keeps (events, IN_EXCL_UNLINK, IN_ONESHOT).
const IN_KEPT: u32 = 0xfff | 0x0400_0000 | 0x8000_0000;
/// Watch descriptors above this are not recreated (each gap costs two
/// syscalls).
const MAX_WD: i32 = 1 << 22;

/// The `key:value` tokens of an fdinfo line's value part.
fn tokens(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split_whitespace().filter_map(|t| t.split_once(':'))
}

/// One `inotify wd:…` line: (wd, ino, kernel sdev, mask, handle type, handle).
type InotifyLine = (i32, u64, u32, u32, i32, Vec<u8>);

/// Parses the value of an `inotify wd` fdinfo line (everything after
/// "inotify wd:").
fn parse_inotify_line(v: &str) -> std::result::Result<InotifyLine, String> {
    let bad = || format!("fdinfo: bad inotify line {v:?}");
    let wd = v.split_whitespace().next().ok_or_else(bad)?;
    let wd = i32::from_str_radix(wd, 16).map_err(|_| bad())?;
    let (mut ino, mut sdev, mut mask, mut htype, mut hbytes, mut handle) =
        (None, None, None, None, None, None);
    for (k, val) in tokens(v) {
        match k {
            "ino" => ino = u64::from_str_radix(val, 16).ok(),
            "sdev" => sdev = u32::from_str_radix(val, 16).ok(),
            "mask" => mask = u32::from_str_radix(val, 16).ok(),
            "fhandle-bytes" => hbytes = usize::from_str_radix(val, 16).ok(),
            "fhandle-type" => htype = i32::from_str_radix(val, 16).ok(),
            "f_handle" => {
                handle = (0..val.len() / 2)
                    .map(|i| u8::from_str_radix(&val[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            }
            _ => {}
        }
    }
    let handle = handle.unwrap_or_default();
    if hbytes.is_some_and(|n| n != handle.len()) {
        return Err(bad());
    }
    Ok((
        wd,
        ino.ok_or_else(bad)?,
        sdev.ok_or_else(bad)?,
        mask.ok_or_else(bad)?,
        htype.unwrap_or(0),
        handle,
    ))
}

pub(super) fn collect(pid: i32, fd: i32, info: &FdInfo) -> Refusal<OpenTarget> {
    let own = steal(pid, fd)?;
    let queued =
        crest_sys::event::readable(own.as_fd()).map_err(|e| format!("the inotify's queue: {e}"))?;
    if queued > 0 {
        return Err(format!(
            "inotify has {queued} bytes of events queued (not supported yet)"
        ));
    }
    let mut watches = Vec::new();
    for v in info.get_all("inotify wd") {
        let (wd, ino, sdev, mask, htype, handle) = parse_inotify_line(v)?;
        let (major, minor) = (sdev >> 20, sdev & 0xfffff);
        let dev = libc::makedev(major, minor);
        // A file unlinked while open keeps its " (deleted)" name here:
        // see `crate::files::inotify_deleted`, which finds its object.
        let path = match find_path(major, minor, ino, dev, htype, &handle) {
            Ok(p) => p,
            Err(e) => return Err(format!("inotify watch {wd}: {e}")),
        };
        watches.push(InotifyWatch {
            wd,
            path,
            mask: mask & IN_KEPT,
            ino,
            dev,
            unlinked: None,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(OpenTarget::Inotify { watches })
}

/// The path of the inode with file handle `handle` on the filesystem of
/// device `major:minor`: opened with open_by_handle_at on a mount of it.
/// A deleted file is refused.
pub(crate) fn path_of_handle(
    major: u32,
    minor: u32,
    ino: u64,
    dev: u64,
    htype: i32,
    handle: &[u8],
) -> std::result::Result<String, String> {
    let p = find_path(major, minor, ino, dev, htype, handle)?;
    if p.ends_with(" (deleted)") {
        return Err(format!("the watched file {p} was deleted"));
    }
    Ok(p)
}

/// As [`path_of_handle`], but a file unlinked while open is given by the
/// name /proc shows for it, "PATH (deleted)".
fn find_path(
    major: u32,
    minor: u32,
    ino: u64,
    dev: u64,
    htype: i32,
    handle: &[u8],
) -> std::result::Result<String, String> {
    let gone =
        || format!("cannot find a path for the watched inode {ino} on device {major}:{minor}");
    if handle.is_empty() {
        return Err(format!("{} (its filesystem gives no file handle)", gone()));
    }
    let mut mounts: Vec<proc::MountInfo> = proc::read_mountinfo(std::process::id() as i32)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|m| m.major == major && m.minor == minor)
        .collect();
    mounts.sort_by_key(|m| m.root != "/");
    let mut last = None;
    for m in mounts {
        let f = match crest_sys::fhandle::open_by_handle(&m.mount_point, htype, handle) {
            Ok(f) => f,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let Ok(p) = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())) else {
            continue;
        };
        let p = p.to_string_lossy().into_owned();
        if p.ends_with(" (deleted)") {
            return Ok(p);
        }
        if same_inode(&p, dev, ino) {
            return Ok(p);
        }
    }
    Err(match last {
        Some(e) => format!("{}: {e}", gone()),
        None => gone(),
    })
}

/// Whether `path` (not followed) is inode `ino` of device `dev`.
fn same_inode(path: &str, dev: u64, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// A new inotify instance with the watches `watches`.
pub(super) fn open(watches: &[InotifyWatch]) -> Result<OwnedFd> {
    let fd = crest_sys::event::inotify()?;
    // Watches on files unlinked while open are added once those are
    // recreated and unlinked again, and with them every other watch of
    // the instance (in watch-descriptor order): see
    // `crate::files::inotify_deleted::add_deferred`.
    if !watches.iter().any(|w| w.unlinked.is_some()) {
        add_watches(&fd, watches, &|w| {
            Err(Error::Invalid(format!(
                "inotify watch {} has no recreated file",
                w.wd
            )))
        })?;
    }
    Ok(fd)
}

pub(super) fn describe(watches: &[InotifyWatch]) -> String {
    let w: Vec<String> = watches
        .iter()
        .map(|w| format!("{}:{} mask {:#x}", w.wd, w.path, w.mask))
        .collect();
    format!("inotify ({})", w.join(", "))
}

fn add_watch(ifd: &OwnedFd, path: &str, mask: u32) -> Result<i32> {
    if path.contains('\0') {
        return Err(Error::Invalid(format!("path with a NUL byte: {path:?}")));
    }
    Ok(crest_sys::event::inotify_add(ifd.as_fd(), path, mask)?)
}

/// A directory crest watches to use up watch descriptors; removed on drop.
struct Filler(std::path::PathBuf);

impl Filler {
    fn new() -> Result<Filler> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("crest-inotify-{}-{n}", std::process::id()));
        std::fs::create_dir(&p).context(|| format!("creating {}", p.display()))?;
        Ok(Filler(p))
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Adds the watches with their descriptor numbers.  The kernel hands out
/// watch descriptors in increasing order (idr_alloc_cyclic), never reusing
/// one until it wraps: each number below a wanted one is used up by
/// adding and removing a watch on a directory of crest's, and the
/// IN_IGNORED events that removal queues are read away at the end.
/// A watch on a file unlinked while open is added through `unlinked_at`:
/// the path (/proc/self/fd/N) of crest's descriptor of its recreated file.
pub(crate) fn add_watches(
    ifd: &OwnedFd,
    watches: &[InotifyWatch],
    unlinked_at: &dyn Fn(&InotifyWatch) -> Result<String>,
) -> Result<()> {
    let mut ws: Vec<&InotifyWatch> = watches.iter().collect();
    ws.sort_by_key(|w| w.wd);
    let mut filler: Option<Filler> = None;
    let mut next = 1;
    let mut pending = 0;
    for w in ws {
        if w.wd < next || w.wd > MAX_WD {
            return Err(Error::Invalid(format!(
                "inotify watch descriptor {} is repeated or out of range",
                w.wd
            )));
        }
        while next < w.wd {
            let dir = match &filler {
                Some(f) => f,
                None => filler.insert(Filler::new()?),
            };
            let path = dir.0.to_string_lossy().into_owned();
            let got = add_watch(ifd, &path, libc::IN_ATTRIB)?;
            crest_sys::event::inotify_remove(ifd.as_fd(), got)?;
            if got != next {
                return Err(Error::msg(format!(
                    "recreating inotify watch descriptor {}: the kernel gave {got} where {next} was expected",
                    w.wd
                )));
            }
            next += 1;
            pending += 1;
            if pending >= 4096 {
                crest_sys::event::drain(ifd.as_fd());
                pending = 0;
            }
        }
        if w.unlinked.is_some() {
            let at = unlinked_at(w)?;
            // Through the /proc link, to the recreated (unlinked) inode.
            let got = add_watch(ifd, &at, w.mask & IN_KEPT)?;
            if got != w.wd {
                return Err(Error::msg(format!(
                    "recreating the inotify watch on the unlinked file {}: the kernel \
                     gave descriptor {got}, not {}",
                    w.path, w.wd
                )));
            }
            next = w.wd + 1;
            continue;
        }
        match std::fs::symlink_metadata(&w.path) {
            Err(e) => {
                return Err(Error::Incompatible(format!(
                    "inotify watch {} is on {}, which is gone: {e}",
                    w.wd, w.path
                )))
            }
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                if m.dev() == w.dev && m.ino() != w.ino {
                    return Err(Error::Incompatible(format!(
                        "inotify watch {} is on {}, which is another file now",
                        w.wd, w.path
                    )));
                }
            }
        }
        let got = add_watch(ifd, &w.path, (w.mask & IN_KEPT) | libc::IN_DONT_FOLLOW)?;
        if got != w.wd {
            return Err(Error::msg(format!(
                "recreating the inotify watch on {}: the kernel gave descriptor {got}, not {}",
                w.path, w.wd
            )));
        }
        next = w.wd + 1;
    }
    crest_sys::event::drain(ifd.as_fd());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_line() {
        let v = "4 ino:996063 sdev:fe00000 mask:80000100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:63609900828a9762";
        let (wd, ino, sdev, mask, t, h) = parse_inotify_line(v).unwrap();
        assert_eq!(
            (wd, ino, sdev, mask, t),
            (4, 0x996063, 0xfe00000, 0x8000_0100, 1)
        );
        assert_eq!(h, vec![0x63, 0x60, 0x99, 0, 0x82, 0x8a, 0x97, 0x62]);
        assert!(parse_inotify_line("1f ino:2 sdev:3 mask:4 fhandle-bytes:9 f_handle:00").is_err());
    }
}
