//! fanotify groups: their fanotify_init flags and their marks.
//!
//! Dump reads a group from its fdinfo (fs/notify/fdinfo.c):
//!
//! ```text
//! fanotify flags:203 event-flags:8000
//! fanotify ino:98e1b5 sdev:fe00000 mflags:440 mask:0 ignored_mask:40000020 fhandle-bytes:8 fhandle-type:1 f_handle:b5e19800a30b873a
//! fanotify sdev:fe00000 mflags:0 mask:100 ignored_mask:0
//! fanotify mnt_id:1b mflags:0 mask:20 ignored_mask:0
//! ```
//!
//! An inode mark is found again by its file handle (open_by_handle_at on
//! a mount of its device, as for inotify watches), a mount mark by its
//! mount id in the process's mountinfo, a filesystem mark by a mount of
//! its device.  Restore makes a group with the same flags and adds each
//! mark with fanotify_mark: its mask, then its ignored mask (with the
//! same API, FAN_MARK_IGNORE or the older FAN_MARK_IGNORED_MASK, and
//! FAN_MARK_IGNORED_SURV_MODIFY), evictable marks as evictable.
//!
//! Refused: a group with events queued (reading them is the only way to
//! see them, and it takes them from the program), a mark whose object
//! cannot be found by a path (an inode with no file handle, deleted, or
//! not reachable from crest's mounts), and mount-namespace marks.  Marks
//! of permission class (FAN_OPEN_PERM, FAN_ACCESS_PERM…) on a group of
//! class FAN_CLASS_CONTENT/PRE_CONTENT are restored like the others.  A
//! permission event pending owes an answer: its requester waits in the
//! kernel.  Queued and not read, it is refused (as any queued event); a
//! requester in the tree cannot be stopped while it waits, and the dump
//! refuses it by name (`crate::task::freeze`).  Not seen by crest: an
//! event the program has read but not answered yet whose requester is
//! outside the tree — when the dumped group is closed the kernel answers
//! it with FAN_ALLOW, and the restored program's answer then meets no
//! pending event (its write fails with ENOENT).

use crate::error::{Error, Refusal, Result};
use crate::model::{Fanotify, FanotifyMark, FanotifyObject};
use crest_sys::proc::{self, FdInfo};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The mark flags fdinfo's `mflags` can show.
const MARK_FLAGS: u32 =
    libc::FAN_MARK_IGNORED_SURV_MODIFY | libc::FAN_MARK_EVICTABLE | libc::FAN_MARK_IGNORE;

fn hex32(v: Option<&str>, what: &str, line: &str) -> std::result::Result<u32, String> {
    v.and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| format!("fdinfo: bad or missing {what} in fanotify line {line:?}"))
}

/// The `key:value` tokens of a line.
fn tokens(s: &str) -> Vec<(&str, &str)> {
    s.split_whitespace()
        .filter_map(|t| t.split_once(':'))
        .collect()
}

fn get<'a>(t: &[(&'a str, &'a str)], k: &str) -> Option<&'a str> {
    t.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
}

/// One mark line of the fdinfo, as parsed (before its object is found).
#[derive(Debug, PartialEq, Eq)]
pub enum MarkLine {
    Inode {
        ino: u64,
        sdev: u32,
        htype: i32,
        handle: Vec<u8>,
    },
    Mount {
        mnt_id: u64,
    },
    Filesystem {
        sdev: u32,
    },
}

/// Parses one mark line (the text after "fanotify "): its object, mflags,
/// mask and ignored mask.
pub fn parse_mark(line: &str) -> std::result::Result<(MarkLine, u32, u32, u32), String> {
    let t = tokens(line);
    let flags = hex32(get(&t, "mflags"), "mflags", line)?;
    let mask = hex32(get(&t, "mask"), "mask", line)?;
    let ignored = hex32(get(&t, "ignored_mask"), "ignored_mask", line)?;
    let first = t.first().map(|(k, _)| *k).unwrap_or("");
    let object = match first {
        "ino" => {
            let ino = get(&t, "ino")
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("fdinfo: bad ino in fanotify line {line:?}"))?;
            let sdev = hex32(get(&t, "sdev"), "sdev", line)?;
            let htype = get(&t, "fhandle-type")
                .and_then(|s| i32::from_str_radix(s, 16).ok())
                .unwrap_or(0);
            let handle = match get(&t, "f_handle") {
                Some(h) => (0..h.len() / 2)
                    .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| format!("fdinfo: bad f_handle in fanotify line {line:?}"))?,
                None => Vec::new(),
            };
            let bytes = get(&t, "fhandle-bytes").and_then(|s| usize::from_str_radix(s, 16).ok());
            if bytes.is_some_and(|n| n != handle.len()) {
                return Err(format!("fdinfo: f_handle of the wrong length in {line:?}"));
            }
            MarkLine::Inode {
                ino,
                sdev,
                htype,
                handle,
            }
        }
        "mnt_id" => MarkLine::Mount {
            mnt_id: get(&t, "mnt_id")
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("fdinfo: bad mnt_id in fanotify line {line:?}"))?,
        },
        "sdev" => MarkLine::Filesystem {
            sdev: hex32(get(&t, "sdev"), "sdev", line)?,
        },
        "mnt_ns" => {
            return Err(
                "a fanotify mark on a mount namespace (FAN_MARK_MNTNS) is not supported".into(),
            )
        }
        _ => return Err(format!("fdinfo: unknown kind of fanotify mark {line:?}")),
    };
    Ok((object, flags, mask, ignored))
}

/// The group behind descriptor `fd` of `pid`, or why it cannot be
/// checkpointed.
pub fn collect(pid: i32, fd: i32, info: &FdInfo) -> Refusal<crate::model::OpenTarget> {
    let own: OwnedFd = crate::error::steal(pid, fd)?;
    let queued = crest_sys::fanotify::queued_bytes(&own).map_err(|e| e.to_string())?;
    if queued > 0 {
        return Err(format!(
            "fanotify group has {queued} bytes of events queued: they can only be seen \
             by reading them, which takes them from the program (not supported)"
        ));
    }
    let head = info
        .get("fanotify flags")
        .ok_or("fdinfo has no fanotify flags line")?;
    let line = format!("flags:{head}");
    let t = tokens(&line);
    let flags = hex32(get(&t, "flags"), "flags", &line)?;
    let event_flags = hex32(get(&t, "event-flags"), "event-flags", &line)?;
    let mut mounts: Option<Vec<proc::MountInfo>> = None;
    let mut marks = Vec::new();
    for (k, v) in &info.extra {
        let Some(kind) = k.strip_prefix("fanotify ") else {
            continue;
        };
        if kind == "flags" {
            continue;
        }
        let line = format!("{kind}:{v}");
        let (obj, mflags, mask, ignored_mask) = parse_mark(&line)?;
        let mounts = match &mounts {
            Some(m) => m,
            None => mounts.insert(proc::read_mountinfo(pid).map_err(|e| e.to_string())?),
        };
        let object = find_object(pid, obj, mounts)?;
        marks.push(FanotifyMark {
            object,
            flags: mflags,
            mask,
            ignored_mask,
        });
    }
    // fdinfo lists the newest mark first.
    marks.reverse();
    Ok(crate::model::OpenTarget::Fanotify(Fanotify {
        flags,
        event_flags,
        marks,
    }))
}

/// The object of mark `m` as a path (`mounts`: the process's mountinfo).
fn find_object(
    pid: i32,
    m: MarkLine,
    mounts: &[proc::MountInfo],
) -> std::result::Result<FanotifyObject, String> {
    match m {
        MarkLine::Inode {
            ino,
            sdev,
            htype,
            handle,
        } => {
            let (major, minor) = (sdev >> 20, sdev & 0xfffff);
            let dev = libc::makedev(major, minor);
            let path = crate::files::events::path_of_handle(major, minor, ino, dev, htype, &handle)
                .map_err(|e| format!("fanotify mark on an inode: {e}"))?;
            Ok(FanotifyObject::Inode { path, ino, dev })
        }
        MarkLine::Mount { mnt_id } => mounts
            .iter()
            .find(|m| m.mnt_id == mnt_id)
            .map(|m| FanotifyObject::Mount {
                path: m.mount_point.clone(),
            })
            .ok_or_else(|| {
                format!(
                    "fanotify mark on mount {mnt_id}, which is not in the mount namespace \
                     of pid {pid} (not supported)"
                )
            }),
        MarkLine::Filesystem { sdev } => {
            let (major, minor) = (sdev >> 20, sdev & 0xfffff);
            let mut on: Vec<&proc::MountInfo> = mounts
                .iter()
                .filter(|m| (m.major, m.minor) == (major, minor))
                .collect();
            on.sort_by_key(|m| m.root != "/");
            on.first()
                .map(|m| FanotifyObject::Filesystem {
                    path: m.mount_point.clone(),
                    dev: libc::makedev(major, minor),
                })
                .ok_or_else(|| {
                    format!(
                        "fanotify mark on the filesystem of device {major}:{minor}, which \
                         has no mount in the mount namespace of pid {pid} (not supported)"
                    )
                })
        }
    }
}

/// The mark's path as crest reaches it, and its fanotify_mark flags.
fn where_and_how(o: &FanotifyObject) -> (std::borrow::Cow<'_, str>, u32) {
    match o {
        FanotifyObject::Inode { path, .. } => (
            crate::ns::mnt::host_path(path),
            libc::FAN_MARK_INODE | libc::FAN_MARK_DONT_FOLLOW,
        ),
        FanotifyObject::Mount { path } => (crate::ns::mnt::host_path(path), libc::FAN_MARK_MOUNT),
        FanotifyObject::Filesystem { path, .. } => {
            (crate::ns::mnt::host_path(path), libc::FAN_MARK_FILESYSTEM)
        }
    }
}

/// Why a mark's object could not be found here.
pub fn object_problem(o: &FanotifyObject) -> Option<String> {
    let (here, _) = where_and_how(o);
    let md = match std::fs::symlink_metadata(&*here) {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "the fanotify mark's {} is gone: {e}",
                describe_object(o)
            ))
        }
    };
    match *o {
        FanotifyObject::Inode { ino, dev, .. } if md.dev() == dev && md.ino() != ino => {
            Some(format!(
                "the fanotify mark's {} is another file now",
                describe_object(o)
            ))
        }
        FanotifyObject::Filesystem { dev, .. } if md.dev() != dev => Some(format!(
            "the fanotify mark's {} is another filesystem now",
            describe_object(o)
        )),
        _ => None,
    }
}

/// Makes group `g` again, with its marks; the caller sets the status
/// flags.
pub fn open(g: &Fanotify) -> Result<OwnedFd> {
    // The flags as given (fdinfo shows FAN_CLOEXEC and FAN_NONBLOCK too);
    // crest's descriptor is made close-on-exec, and the caller sets the
    // description's status flags.
    let fd = crest_sys::fanotify::init(g.flags, g.event_flags)?;
    crest_sys::fanotify::set_cloexec(&fd)?;
    for m in &g.marks {
        if m.flags & !MARK_FLAGS != 0 {
            return Err(Error::Invalid(format!(
                "fanotify mark flags {:#x} of {} are not mark flags",
                m.flags,
                describe_object(&m.object)
            )));
        }
        if let Some(why) = object_problem(&m.object) {
            return Err(Error::Incompatible(why));
        }
        let (path, how) = where_and_how(&m.object);
        let evictable = m.flags & libc::FAN_MARK_EVICTABLE;
        if m.mask != 0 || m.ignored_mask == 0 {
            crest_sys::fanotify::mark(
                &fd,
                libc::FAN_MARK_ADD | how | evictable,
                m.mask as u64,
                &path,
            )?;
        }
        if m.ignored_mask != 0 {
            let api = if m.flags & libc::FAN_MARK_IGNORE == libc::FAN_MARK_IGNORE {
                libc::FAN_MARK_IGNORE
            } else {
                libc::FAN_MARK_IGNORED_MASK
            };
            let surv = m.flags & libc::FAN_MARK_IGNORED_SURV_MODIFY;
            crest_sys::fanotify::mark(
                &fd,
                libc::FAN_MARK_ADD | how | evictable | api | surv,
                m.ignored_mask as u64,
                &path,
            )?;
        }
    }
    Ok(fd)
}

fn describe_object(o: &FanotifyObject) -> String {
    match o {
        FanotifyObject::Inode { path, .. } => format!("inode {path}"),
        FanotifyObject::Mount { path } => format!("mount {path}"),
        FanotifyObject::Filesystem { path, .. } => format!("filesystem of {path}"),
    }
}

/// A short description of a group, for `inspect`.
pub fn describe(g: &Fanotify) -> String {
    let m: Vec<String> = g
        .marks
        .iter()
        .map(|m| {
            format!(
                "{} mask {:#x}{}",
                describe_object(&m.object),
                m.mask,
                if m.ignored_mask != 0 {
                    format!(" ignored {:#x}", m.ignored_mask)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    format!(
        "fanotify (flags {:#x}, event flags 0{:o}; {})",
        g.flags,
        g.event_flags,
        m.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_lines() {
        let (o, f, m, i) = parse_mark(
            "ino:98e1b5 sdev:fe00000 mflags:440 mask:0 ignored_mask:40000020 \
             fhandle-bytes:8 fhandle-type:1 f_handle:b5e19800a30b873a",
        )
        .unwrap();
        assert_eq!(
            o,
            MarkLine::Inode {
                ino: 0x98e1b5,
                sdev: 0xfe00000,
                htype: 1,
                handle: vec![0xb5, 0xe1, 0x98, 0, 0xa3, 0x0b, 0x87, 0x3a]
            }
        );
        assert_eq!((f, m, i), (0x440, 0, 0x4000_0020));
        assert_eq!(
            parse_mark("sdev:fe00000 mflags:0 mask:100 ignored_mask:0").unwrap(),
            (MarkLine::Filesystem { sdev: 0xfe00000 }, 0, 0x100, 0)
        );
        assert_eq!(
            parse_mark("mnt_id:1b mflags:0 mask:20 ignored_mask:0").unwrap(),
            (MarkLine::Mount { mnt_id: 0x1b }, 0, 0x20, 0)
        );
        assert!(parse_mark("mnt_ns:4 mflags:0 mask:1 ignored_mask:0")
            .unwrap_err()
            .contains("mount namespace"));
        assert!(parse_mark("ino:1 sdev:2 mflags:0 mask:1").is_err());
        assert!(parse_mark(
            "ino:1 sdev:2 mflags:0 mask:1 ignored_mask:0 fhandle-bytes:9 fhandle-type:1 f_handle:00"
        )
        .is_err());
    }
}
