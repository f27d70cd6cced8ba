//! File locks: POSIX record locks (fcntl F_SETLK), OFD locks
//! (F_OFD_SETLK), flock(2) locks and leases (F_SETLEASE).
//!
//! Dump reads them from the `lock:` lines of /proc/PID/fdinfo/FD: the
//! kernel lists there the locks taken through that open file description
//! whose owner is the description itself (flock, OFD, lease) or the
//! reading process's descriptor table (POSIX).  A description held by
//! several descriptors or processes shows its own locks at each: they are
//! recorded once, in the first process met.  POSIX locks belong to the
//! process: recorded per process.
//!
//! Restore takes every lock again *in the restored process*, by an
//! injected call on the restored descriptor, so that the owner (and the
//! pid /proc/locks shows) is the same.  This runs once the descriptor
//! table is final: closing any descriptor of a file drops the process's
//! POSIX locks on it, and restore's helper descriptors (mappings, exe)
//! are closed just before.  A lock another process took meanwhile makes
//! the restore fail, naming the file.

use crate::error::Result;
use crate::model::{FileLock, LockKind, ObjectId};
use crate::task::freeze::{Call, Inject};
use crest_sys::proc::FdInfo;
use std::collections::HashSet;

/// Locks already recorded: (owner, object, kind, write, start, len);
/// the owner is the pid for POSIX locks, else 0 (the description).
#[derive(Default)]
pub struct LockIndex {
    seen: HashSet<(i32, ObjectId, u8, bool, u64, u64)>,
}

/// One `lock:` line of an fdinfo.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    kind: LockKind,
    write: bool,
    start: u64,
    len: u64,
}

/// Parses `1: POSIX  ADVISORY  WRITE 24661 fe:00:10010690 5 14`.
fn parse_line(v: &str) -> std::result::Result<Line, String> {
    let t: Vec<&str> = v.split_whitespace().collect();
    let bad = || format!("unexpected lock line {v:?}");
    if t.len() < 8 {
        return Err(bad());
    }
    let kind = match t[1] {
        "POSIX" => LockKind::Posix,
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        "LEASE" => LockKind::Lease,
        other => return Err(format!("a {other} lock is not supported")),
    };
    match (kind, t[2]) {
        (LockKind::Lease, "ACTIVE") => {}
        (LockKind::Lease, s) => {
            return Err(format!(
                "a lease being broken ({s}) is not supported: another process is opening the file"
            ))
        }
        (_, "ADVISORY") => {}
        (_, s) => return Err(format!("a {s} lock is not supported")),
    }
    let write = match t[3] {
        "WRITE" => true,
        "READ" => false,
        s => return Err(format!("a lock of type {s} is not supported")),
    };
    let start: u64 = t[6].parse().map_err(|_| bad())?;
    let len = match t[7] {
        "EOF" => 0,
        e => {
            let end: u64 = e.parse().map_err(|_| bad())?;
            end.checked_sub(start).ok_or_else(bad)? + 1
        }
    };
    Ok(Line {
        kind,
        write,
        start,
        len,
    })
}

/// Records the locks listed in the fdinfo of descriptor `fd` of `pid`
/// (open file description `object`) into `out`; the error says why one
/// cannot be checkpointed.
pub fn collect(
    pid: i32,
    fd: i32,
    object: ObjectId,
    info: &FdInfo,
    index: &mut LockIndex,
    out: &mut Vec<FileLock>,
) -> std::result::Result<(), String> {
    for (k, v) in &info.extra {
        if k != "lock" {
            continue;
        }
        let l = parse_line(v)?;
        let owner = if l.kind == LockKind::Posix { pid } else { 0 };
        let key = (owner, object, l.kind as u8, l.write, l.start, l.len);
        if !index.seen.insert(key) {
            continue;
        }
        out.push(FileLock {
            fd,
            kind: l.kind,
            write: l.write,
            start: l.start,
            len: l.len,
        });
    }
    Ok(())
}

/// `struct flock` for F_SETLK / F_OFD_SETLK.
fn flock_bytes(l: &FileLock) -> [u8; 32] {
    let mut b = [0u8; 32];
    let ty = if l.write {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as i16;
    b[0..2].copy_from_slice(&ty.to_ne_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
    b[8..16].copy_from_slice(&(l.start as i64).to_ne_bytes());
    b[16..24].copy_from_slice(&(l.len as i64).to_ne_bytes());
    b
}

fn describe(l: &FileLock) -> String {
    let ty = if l.write { "write" } else { "read" };
    let range = || match l.len {
        0 => format!("bytes {}..EOF", l.start),
        n => format!("bytes {}..{}", l.start, l.start + n),
    };
    match l.kind {
        LockKind::Posix => format!("fd {}: taking its POSIX {ty} lock on {}", l.fd, range()),
        LockKind::Ofd => format!("fd {}: taking its OFD {ty} lock on {}", l.fd, range()),
        LockKind::Flock => format!("fd {}: taking its flock {ty} lock", l.fd),
        LockKind::Lease => format!("fd {}: taking its {ty} lease", l.fd),
    }
}

/// Takes `locks` again in the restored process `t` (queued calls; a lock
/// held by someone else meanwhile fails the restore).
pub fn restore(t: &impl Inject, locks: &[FileLock]) -> Result<()> {
    for l in locks {
        let what = format!(
            "{} (another process may hold a conflicting lock now)",
            describe(l)
        );
        let fd = l.fd as u64;
        let call = match l.kind {
            LockKind::Posix | LockKind::Ofd => {
                let cmd = if l.kind == LockKind::Posix {
                    libc::F_SETLK
                } else {
                    libc::F_OFD_SETLK
                };
                let a = t.place(&flock_bytes(l))?;
                Call::new(libc::SYS_fcntl, &[fd, cmd as u64, a], what)
            }
            LockKind::Flock => {
                let op = if l.write {
                    libc::LOCK_EX
                } else {
                    libc::LOCK_SH
                } | libc::LOCK_NB;
                Call::new(libc::SYS_flock, &[fd, op as u64], what)
            }
            LockKind::Lease => {
                let ty = if l.write {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                };
                Call::new(
                    libc::SYS_fcntl,
                    &[fd, libc::F_SETLEASE as u64, ty as u64],
                    what,
                )
            }
        };
        t.queue(call)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_lines() {
        let l = parse_line("1: POSIX  ADVISORY  WRITE 24661 fe:00:10010690 5 14").unwrap();
        assert_eq!(
            l,
            Line {
                kind: LockKind::Posix,
                write: true,
                start: 5,
                len: 10
            }
        );
        let l = parse_line("2: POSIX  ADVISORY  READ 24661 fe:00:10010690 50 EOF").unwrap();
        assert_eq!((l.write, l.start, l.len), (false, 50, 0));
        let l = parse_line("1: OFDLCK ADVISORY  WRITE -1 fe:00:10010709 3 9").unwrap();
        assert_eq!((l.kind, l.start, l.len), (LockKind::Ofd, 3, 7));
        let l = parse_line("1: FLOCK  ADVISORY  WRITE 24661 fe:00:10010706 0 EOF").unwrap();
        assert_eq!(l.kind, LockKind::Flock);
        let l = parse_line("1: LEASE  ACTIVE    READ 24661 fe:00:10010675 0 EOF").unwrap();
        assert_eq!((l.kind, l.write), (LockKind::Lease, false));
        assert!(parse_line("1: LEASE  BREAKING  READ 1 fe:00:1 0 EOF").is_err());
        assert!(parse_line("1: DELEG  ACTIVE    READ 1 fe:00:1 0 EOF").is_err());
    }
}
