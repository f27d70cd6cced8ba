//! System V shared memory segments attached by the tree.
//!
//! Dump finds the segment behind a "/SYSV%08x (deleted)" mapping (by the
//! inode of its shm file) in /proc/sysvipc/shm; its content is saved like
//! any shared-memory object.  Restore recreates the segment with the same
//! id (through /proc/sys/kernel/shm_next_id), fills it through a
//! descriptor on its shm file, lets each process attach it with `shmat`,
//! and then restores its owner and mode and, if it was marked for
//! removal, removes it again.

use crate::error::{Error, Result};
use crate::model::{Object, ObjectKind, ShmemKind, ShmemObj};
use crest_sys::sysvipc::{self, ShmAttach};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";
/// shm_perm.mode flag: marked for removal.
const SHM_DEST: u32 = 0o1000;

/// A segment as /proc/sysvipc/shm lists it.
#[derive(Debug, Clone)]
pub struct Segment {
    pub key: i32,
    pub shmid: i32,
    pub perms: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
}

impl Segment {
    pub fn kind(&self) -> ShmemKind {
        ShmemKind::SysV {
            key: self.key,
            shmid: self.shmid,
            mode: self.perms & 0o777,
            uid: self.uid,
            gid: self.gid,
            cuid: self.cuid,
            cgid: self.cgid,
            destroyed: self.perms & SHM_DEST != 0,
        }
    }
}

/// The segments of crest's IPC namespace.
pub fn segments() -> std::result::Result<Vec<Segment>, String> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm")
        .map_err(|e| format!("cannot read /proc/sysvipc/shm: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 11 {
            continue;
        }
        let num = |i: usize| f[i].parse::<i64>().ok();
        let (Some(key), Some(shmid), Ok(perms), Some(size)) = (
            num(0),
            num(1),
            u32::from_str_radix(f[2], 8),
            f[3].parse::<u64>().ok(),
        ) else {
            continue;
        };
        let (Some(uid), Some(gid), Some(cuid), Some(cgid)) = (num(7), num(8), num(9), num(10))
        else {
            continue;
        };
        out.push(Segment {
            key: key as i32,
            shmid: shmid as i32,
            perms,
            size,
            uid: uid as u32,
            gid: gid as u32,
            cuid: cuid as u32,
            cgid: cgid as u32,
        });
    }
    Ok(out)
}

/// The segment whose shm file has inode `ino` and size `size`: each
/// candidate is attached (read-only) for a moment to compare inodes, as
/// /proc/sysvipc/shm does not show them.
pub fn find(ino: u64, size: u64) -> std::result::Result<Segment, String> {
    for s in segments()? {
        if s.size != size {
            continue;
        }
        let Ok(a) = ShmAttach::new(s.shmid, s.size, false) else {
            continue;
        };
        if std::fs::metadata(a.link()).is_ok_and(|md| md.ino() == ino) {
            return Ok(s);
        }
    }
    Err(format!(
        "System V shared memory segment with inode {ino} not found in /proc/sysvipc/shm"
    ))
}

fn write_next_id(v: i32) -> Result<()> {
    std::fs::write(SHM_NEXT_ID, v.to_string())
        .map_err(|e| Error::msg(format!("writing {v} to {SHM_NEXT_ID}: {e}")))
}

/// The kernel clears shm_next_id when it uses it, but not when shmget
/// fails before, and the sysctl does not take -1: use it up then.
fn reset_next_id() -> Result<()> {
    let read = || {
        std::fs::read_to_string(SHM_NEXT_ID)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    if read() == Some(-1) {
        return Ok(());
    }
    if let Ok(id) = sysvipc::shm_get(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600) {
        sysvipc::shm_remove(id);
    }
    match read() {
        Some(-1) => Ok(()),
        v => Err(Error::msg(format!(
            "{SHM_NEXT_ID} is left at {v:?} after recreating System V shared memory"
        ))),
    }
}

/// Segments crest recreated: removed on drop unless kept.
#[derive(Default)]
pub struct Segments {
    made: Vec<(u32, i32)>,
    kept: bool,
}

impl Segments {
    /// Recreates the segment of object `object` with its id and returns
    /// a descriptor on its shm file (for filling it).
    pub fn create(&mut self, object: u32, m: &ShmemObj) -> Result<OwnedFd> {
        let ShmemKind::SysV {
            key,
            shmid,
            mode,
            destroyed,
            ..
        } = m.kind
        else {
            return Err(Error::Invalid(format!(
                "object {object} is not System V shared memory"
            )));
        };
        if shmid < 0 {
            return Err(Error::Invalid(format!("object {object}: shmid {shmid}")));
        }
        let key_taken = key != libc::IPC_PRIVATE && sysvipc::shm_get(key, 0, 0).is_ok();
        // A segment marked for removal has no key any more, but its name
        // (in /proc/PID/maps) shows the one it had: keep it if free.
        let key = match (destroyed, key_taken) {
            (true, true) => libc::IPC_PRIVATE,
            (true, false) | (false, false) => key,
            (false, true) => {
                return Err(Error::msg(format!(
                    "System V shared memory key {key:#x} is in use (needed by shmid {shmid})"
                )))
            }
        };
        write_next_id(shmid)?;
        let got = sysvipc::shm_get(
            key,
            m.size,
            libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32,
        );
        let reset = reset_next_id();
        let got = match got {
            Ok(id) => id,
            Err(err) => {
                return Err(match err.raw_os_error() {
                    Some(libc::ENOSPC) => Error::msg(format!("shmid {shmid} is in use")),
                    Some(libc::EEXIST) => Error::msg(format!(
                        "System V shared memory key {key:#x} is in use (needed by shmid {shmid})"
                    )),
                    _ => Error::msg(format!(
                        "recreating System V shared memory {shmid} ({} bytes): {err}",
                        m.size
                    )),
                })
            }
        };
        if got != shmid {
            sysvipc::shm_remove(got);
            return Err(Error::msg(format!("shmid {shmid} is in use")));
        }
        self.made.push((object, shmid));
        reset?;
        let a = ShmAttach::new(shmid, m.size, true)
            .map_err(|e| Error::msg(format!("attaching shmid {shmid}: {e}")))?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(a.link())
            .map_err(|e| Error::msg(format!("opening {}: {e}", a.link())))?;
        Ok(OwnedFd::from(f))
    }

    /// Once every process has attached them: restores owner and mode and
    /// removes the segments that were marked for removal.
    pub fn finish(&self, objects: &dyn Fn(u32) -> Option<ObjectKind>) -> Result<()> {
        for &(object, shmid) in &self.made {
            let Some(ObjectKind::Shmem(ShmemObj {
                kind:
                    ShmemKind::SysV {
                        mode,
                        uid,
                        gid,
                        destroyed,
                        ..
                    },
                ..
            })) = objects(object)
            else {
                continue;
            };
            sysvipc::shm_set_owner(shmid, uid, gid, mode)?;
            if destroyed {
                sysvipc::shm_remove(shmid);
            }
        }
        Ok(())
    }

    /// The restore succeeded: the segments stay.
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        if !self.kept {
            for &(_, shmid) in &self.made {
                sysvipc::shm_remove(shmid);
            }
        }
    }
}

/// The SysV objects of an image: object id → shmid.
pub fn shmids(objects: &[Object]) -> HashMap<u32, i32> {
    objects
        .iter()
        .filter_map(|o| match &o.kind {
            ObjectKind::Shmem(ShmemObj {
                kind: ShmemKind::SysV { shmid, .. },
                ..
            }) => Some((o.id, *shmid)),
            _ => None,
        })
        .collect()
}

/// After a dump that killed the tree: removes the System V segments it
/// saved (the image holds them now, and a restore needs their ids free).
pub fn remove_dumped(objects: &[Object]) {
    for shmid in shmids(objects).into_values() {
        sysvipc::shm_remove(shmid);
    }
}
