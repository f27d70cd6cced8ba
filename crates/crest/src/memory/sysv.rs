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
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
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

/// crest's own attach of a segment, detached on drop.
struct Attach {
    addr: *mut libc::c_void,
    len: u64,
}

impl Attach {
    fn new(shmid: i32, size: u64, flags: i32) -> std::io::Result<Attach> {
        // SAFETY: the kernel picks a free address; nothing else uses it.
        let addr = unsafe { libc::shmat(shmid, std::ptr::null(), flags) };
        if addr as isize == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Attach {
            addr,
            len: crate::memory::round_up(size.max(1)),
        })
    }

    /// The /proc/self/map_files link of the attach (its shm file).
    fn link(&self) -> String {
        let a = self.addr as u64;
        format!("/proc/self/map_files/{a:x}-{:x}", a + self.len)
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        // SAFETY: detaching exactly the attach made in `new`, never touched.
        unsafe { libc::shmdt(self.addr) };
    }
}

/// The segment whose shm file has inode `ino` and size `size`: each
/// candidate is attached (read-only) for a moment to compare inodes, as
/// /proc/sysvipc/shm does not show them.
pub fn find(ino: u64, size: u64) -> std::result::Result<Segment, String> {
    for s in segments()? {
        if s.size != size {
            continue;
        }
        let Ok(a) = Attach::new(s.shmid, s.size, libc::SHM_RDONLY) else {
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
    // SAFETY: shmget takes no pointers.
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600) };
    if id >= 0 {
        rmid(id);
    }
    match read() {
        Some(-1) => Ok(()),
        v => Err(Error::msg(format!(
            "{SHM_NEXT_ID} is left at {v:?} after recreating System V shared memory"
        ))),
    }
}

fn rmid(shmid: i32) {
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
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
        // SAFETY: shmget takes no pointers.
        let key_taken = key != libc::IPC_PRIVATE && unsafe { libc::shmget(key, 0, 0) } >= 0;
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
        // SAFETY: shmget takes no pointers.
        let got = unsafe {
            libc::shmget(
                key,
                m.size as usize,
                libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32,
            )
        };
        let err = std::io::Error::last_os_error();
        let reset = reset_next_id();
        if got < 0 {
            return Err(match err.raw_os_error() {
                Some(libc::ENOSPC) => Error::msg(format!("shmid {shmid} is in use")),
                Some(libc::EEXIST) => Error::msg(format!(
                    "System V shared memory key {key:#x} is in use (needed by shmid {shmid})"
                )),
                _ => Error::msg(format!(
                    "recreating System V shared memory {shmid} ({} bytes): {err}",
                    m.size
                )),
            });
        }
        if got != shmid {
            rmid(got);
            return Err(Error::msg(format!("shmid {shmid} is in use")));
        }
        self.made.push((object, shmid));
        reset?;
        let a = Attach::new(shmid, m.size, 0)
            .map_err(|e| Error::msg(format!("attaching shmid {shmid}: {e}")))?;
        let c = std::ffi::CString::new(a.link()).expect("no NUL");
        // SAFETY: `c` is a valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(crest_sys::Error::last_os(format!("opening {}", a.link())).into());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
            // SAFETY: an all-zero shmid_ds is a valid value.
            let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
            // SAFETY: IPC_STAT fills `ds`, which lives across the call.
            if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } != 0 {
                return Err(crest_sys::Error::last_os(format!("IPC_STAT on shmid {shmid}")).into());
            }
            ds.shm_perm.uid = uid;
            ds.shm_perm.gid = gid;
            ds.shm_perm.mode = (mode & 0o777) as _;
            // SAFETY: IPC_SET reads `ds`, which lives across the call.
            if unsafe { libc::shmctl(shmid, libc::IPC_SET, &mut ds) } != 0 {
                return Err(crest_sys::Error::last_os(format!("IPC_SET on shmid {shmid}")).into());
            }
            if destroyed {
                rmid(shmid);
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
                rmid(shmid);
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
        rmid(shmid);
    }
}
