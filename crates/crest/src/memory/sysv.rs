//! System V shared memory segments: those the tree attached in crest's
//! IPC namespace, and every segment of a private IPC namespace of the
//! tree (see [`crate::ns::ipc`]).
//!
//! Dump finds the segment behind a "/SYSV%08x (deleted)" mapping (by the
//! inode of its shm file) in /proc/sysvipc/shm, read in the IPC namespace
//! of the process that maps it; its content is saved like any
//! shared-memory object.  In a private IPC namespace every segment listed
//! there is saved, attached or not (one nobody attaches persists in the
//! namespace): crest attaches it for a moment, read-only, on a thread
//! that joined the namespace, keeps a descriptor on its shm file and
//! streams its content from that.
//!
//! Restore recreates a segment of crest's namespace with the same id
//! (through /proc/sys/kernel/shm_next_id) while the image is read, and
//! fills it through a descriptor on its shm file.  A segment of a private
//! namespace cannot exist before its namespace, which the tree's first
//! process in it creates (CLONE_NEWIPC): its content is first streamed
//! into a memfd, and once the stubs exist (before any runs, and before
//! any attaches) crest joins the namespace, recreates the segment with
//! its id (that namespace's shm_next_id) and key, and moves the content
//! over in 1 MiB pieces, punching each out of the memfd as it goes (so
//! the content is in memory about once, and holes stay holes).  Each
//! process then attaches its segments with `shmat` at the same addresses
//! with the same flags (SHM_RDONLY, SHM_EXEC); then owner, group and mode
//! are restored, SHM_LOCK is applied again and a segment that was marked
//! for removal (IPC_RMID while attached) is removed again.  If the
//! restore fails, the segments made in crest's namespace are removed;
//! those of a private namespace go with it, when its stubs are killed.
//!
//! The creator ids (shm_perm.cuid/cgid, which IPC_SET cannot change) are
//! kept by creating the segment on a thread of crest whose effective ids
//! are the creator's for that call; they become crest's only if crest
//! may not switch to them (no CAP_SETUID/CAP_SETGID).  Not kept: the
//! attach, detach and change times and the creator and last-operator
//! PIDs (shm_cpid, shm_lpid): the kernel offers no way to set them.
//! SHM_NORESERVE (accounting only) is not seen and not kept.  Refused by
//! check and dump, before the tree is touched: segments in huge pages
//! (SHM_HUGETLB), attached or not; a segment of a private namespace that
//! a process outside the tree attaches (its attach count would change and
//! that process would no longer share it); attaches that are not whole
//! (one mapping from offset 0 over the whole segment).

use crate::error::{Context, Error, Result};
use crate::files::DataSource;
use crate::model::{Checkpoint, NsState, Object, ObjectKind, ShmemKind, ShmemObj};
use crate::objects::ObjectTable;
use crate::Obstacle;
use crest_sys::sysvipc::{self, ShmAttach};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";
/// shm_perm.mode flag: marked for removal.
const SHM_DEST: u32 = 0o1000;
/// shm_perm.mode flag: locked in memory (SHM_LOCK).
const SHM_LOCKED: u32 = 0o2000;

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
    /// How many attaches it has.
    pub nattch: u64,
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
            locked: self.perms & SHM_LOCKED != 0,
        }
    }
}

/// The segments of the calling thread's IPC namespace.
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
            nattch: num(6).unwrap_or(0) as u64,
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

/// [`find`] in the IPC namespace of `pid` (crest's or a private one).
pub fn find_for(pid: i32, ino: u64, size: u64) -> std::result::Result<Segment, String> {
    let ns = |p: &str| std::fs::metadata(p).map(|m| m.ino());
    let theirs = format!("/proc/{pid}/ns/ipc");
    match (ns(&theirs), ns("/proc/self/ns/ipc")) {
        (Ok(a), Ok(b)) if a == b => find(ino, size),
        _ => crest_sys::ns::run_in(pid, "ipc", libc::CLONE_NEWIPC, || find(ino, size)).map_err(
            |e| format!("looking for the segment in the IPC namespace of pid {pid}: {e}"),
        )?,
    }
}

/// A segment of a private IPC namespace as dump found it, with a
/// descriptor on its shm file.
pub struct NsSegment {
    pub seg: Segment,
    pub file: File,
    pub dev: u64,
    pub ino: u64,
    /// The huge page size of a SHM_HUGETLB segment.
    pub huge_page: Option<u64>,
}

/// Every segment of the calling thread's IPC namespace (run on a thread
/// that joined it), each attached read-only for a moment to open its
/// shm file.
pub fn list_here() -> std::result::Result<Vec<NsSegment>, String> {
    let mut out = Vec::new();
    for seg in segments()? {
        let what = || format!("shmid {} (key {:#x})", seg.shmid, seg.key);
        let a = ShmAttach::new(seg.shmid, seg.size, false)
            .map_err(|e| format!("attaching {} to read it: {e}", what()))?;
        let file = a
            .open()
            .map_err(|e| format!("opening the shm file of {}: {e}", what()))?;
        let md = file
            .metadata()
            .map_err(|e| format!("stat of the shm file of {}: {e}", what()))?;
        let huge_page = crest_sys::mem::hugetlb_page_size(file.as_fd())
            .map_err(|e| format!("statfs of the shm file of {}: {e}", what()))?;
        out.push(NsSegment {
            dev: md.dev(),
            ino: md.ino(),
            huge_page,
            file,
            seg,
        });
    }
    Ok(out)
}

/// How many mappings of the processes `tree` have of each shm inode
/// (dev, ino) in `want`.
fn tree_attaches(tree: &[i32], want: &HashSet<(u64, u64)>) -> HashMap<(u64, u64), u64> {
    let mut out = HashMap::new();
    for &p in tree {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{p}/maps")) else {
            continue;
        };
        for l in maps.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (Some(dev), Some(ino)) = (f.get(3), f.get(4).and_then(|i| i.parse::<u64>().ok()))
            else {
                continue;
            };
            let Some((ma, mi)) = dev.split_once(':') else {
                continue;
            };
            let (Ok(ma), Ok(mi)) = (u32::from_str_radix(ma, 16), u32::from_str_radix(mi, 16))
            else {
                continue;
            };
            let key = (libc::makedev(ma, mi), ino);
            if want.contains(&key) {
                *out.entry(key).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Adds the segments of a private IPC namespace (of `pid`) to the table
/// and returns their object ids: a segment the tree attaches is there
/// already (found by its inode when its mapping was met, key and all);
/// any other gets an object whose content is read through crest's
/// descriptor.  Segments restore could not recreate exactly are refused:
/// those in huge pages, and those attached by a process outside `tree`
/// (the processes of the tree), whose attach would not come back.
pub fn add_ns_segments(
    pid: i32,
    tree: &[i32],
    list: Vec<NsSegment>,
    objects: &mut ObjectTable,
    data: &mut Vec<DataSource>,
    obstacles: &mut Vec<Obstacle>,
) -> Vec<u32> {
    let mut ids = Vec::new();
    let inodes: HashSet<(u64, u64)> = list.iter().map(|s| (s.dev, s.ino)).collect();
    let attaches = tree_attaches(tree, &inodes);
    for s in list {
        let mine = attaches.get(&(s.dev, s.ino)).copied().unwrap_or(0);
        if s.seg.nattch > mine {
            obstacles.push(Obstacle {
                pid,
                object: format!(
                    "System V shared memory shmid {} (key {:#x}) of the IPC namespace",
                    s.seg.shmid, s.seg.key
                ),
                reason: format!(
                    "it is attached {} times, {mine} of them by the tree: a process outside \
                     the tree (one that joined the namespace) attaches it, and that attach \
                     would not come back",
                    s.seg.nattch
                ),
            });
            continue;
        }
        if s.huge_page.is_some() {
            obstacles.push(Obstacle {
                pid,
                object: format!(
                    "System V shared memory shmid {} (key {:#x}) of the IPC namespace",
                    s.seg.shmid, s.seg.key
                ),
                reason: "System V shared memory in huge pages (SHM_HUGETLB) is not supported"
                    .into(),
            });
            continue;
        }
        if let Some(id) = objects.shmem(s.dev, s.ino) {
            ids.push(id);
            continue;
        }
        let size = s.seg.size;
        let id = objects.add_shmem(
            s.dev,
            s.ino,
            ObjectKind::Shmem(ShmemObj {
                kind: s.seg.kind(),
                size,
                owner: None,
                huge_page: None,
            }),
        );
        data.push(DataSource::ShmemFile {
            object: id,
            what: format!(
                "System V shared memory shmid {} (key {:#x}) of pid {pid}'s IPC namespace",
                s.seg.shmid, s.seg.key
            ),
            file: s.file,
            size,
        });
        ids.push(id);
    }
    ids
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

/// Segments crest recreated: those of crest's namespace are removed on
/// drop unless kept.
#[derive(Default)]
pub struct Segments {
    made: Vec<(u32, i32)>,
    kept: bool,
    /// The objects of private IPC namespaces: staged in a memfd until
    /// their namespace exists.
    private: HashSet<u32>,
    staged: HashMap<u32, OwnedFd>,
    /// Segments made in private namespaces: (object, shmid, pid of a
    /// stub in the namespace).
    made_private: Vec<(u32, i32, i32)>,
}

/// The object's System V fields.
fn sysv_of(object: u32, m: &ShmemObj) -> Result<(i32, i32, u32, bool)> {
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
    Ok((key, shmid, mode, destroyed))
}

/// Recreates the segment of object `object` with its id in the calling
/// thread's IPC namespace; `made(shmid)` is told as soon as it exists.
/// Returns its id and a descriptor on its shm file (for filling it).
fn make_here(object: u32, m: &ShmemObj, made: &mut dyn FnMut(i32)) -> Result<(i32, OwnedFd)> {
    let (key, shmid, mode, destroyed) = sysv_of(object, m)?;
    let (cuid, cgid) = match m.kind {
        ShmemKind::SysV { cuid, cgid, .. } => (cuid, cgid),
        _ => (0, 0),
    };
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
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32;
    // Made by its creator's ids, which the kernel records (cuid/cgid);
    // as crest's if crest may not take them.
    let got = match sysvipc::shm_get_as(cuid, cgid, key, m.size, flags) {
        Ok(r) => r,
        Err(_) => sysvipc::shm_get(key, m.size, flags),
    };
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
                    "recreating System V shared memory {shmid} (key {key:#x}, {} bytes): {err}",
                    m.size
                )),
            })
        }
    };
    if got != shmid {
        sysvipc::shm_remove(got);
        return Err(Error::msg(format!("shmid {shmid} is in use")));
    }
    made(shmid);
    reset?;
    let a = ShmAttach::new(shmid, m.size, true)
        .map_err(|e| Error::msg(format!("attaching shmid {shmid} (key {key:#x}): {e}")))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.link())
        .map_err(|e| Error::msg(format!("opening {} (shmid {shmid}): {e}", a.link())))?;
    Ok((shmid, OwnedFd::from(f)))
}

/// Moves the content staged in `from` into the segment's file `to`, one
/// piece at a time, each punched out of `from` once copied; holes are
/// skipped.
fn move_staged(from: &OwnedFd, to: &OwnedFd, size: u64) -> std::io::Result<()> {
    use rustix::fs::{FallocateFlags, SeekFrom};
    let (src, dst) = (File::from(from.try_clone()?), File::from(to.try_clone()?));
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let start = match rustix::fs::seek(from, SeekFrom::Data(off)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(from, SeekFrom::Hole(start))?.min(size);
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], pos)?;
            dst.write_all_at(&buf[..n], pos)?;
            rustix::fs::fallocate(
                from,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                pos,
                n as u64,
            )?;
            pos += n as u64;
        }
        off = end.max(start + 1);
    }
    Ok(())
}

impl Segments {
    /// Marks `objects` as segments of private IPC namespaces (see
    /// [`Segments::create_private`]); before any is created.
    pub fn set_private(&mut self, objects: HashSet<u32>) {
        self.private = objects;
    }

    /// Recreates the segment of object `object` with its id and returns
    /// a descriptor on its shm file (for filling it).  A segment of a
    /// private IPC namespace gets a memfd of its size instead, which
    /// holds its content until [`Segments::create_private`].
    pub fn create(&mut self, object: u32, m: &ShmemObj) -> Result<OwnedFd> {
        if self.private.contains(&object) {
            sysv_of(object, m)?;
            let fd =
                rustix::fs::memfd_create("crest-sysv-staging", rustix::fs::MemfdFlags::CLOEXEC)
                    .map_err(|e| {
                        Error::msg(format!(
                            "memfd_create for System V segment object {object}: {e}"
                        ))
                    })?;
            rustix::fs::ftruncate(&fd, m.size).map_err(|e| {
                Error::msg(format!(
                    "sizing the staging memfd of object {object} to {} bytes: {e}",
                    m.size
                ))
            })?;
            self.staged.insert(object, fd.try_clone()?);
            return Ok(fd);
        }
        let made = &mut self.made;
        let (_, fd) = make_here(object, m, &mut |shmid| made.push((object, shmid)))?;
        Ok(fd)
    }

    /// On a thread in the (new) private IPC namespace of stub `host`:
    /// recreates the segment of object `object` there with its id, and
    /// moves the content staged for it in.
    pub fn create_private(&mut self, object: u32, m: &ShmemObj, host: i32) -> Result<()> {
        let (key, shmid, ..) = sysv_of(object, m)?;
        let (shmid, fd) = make_here(object, m, &mut |_| {})
            .context(|| format!("recreating shmid {shmid} (key {key:#x}) in the IPC namespace of restored pid {host}"))?;
        self.made_private.push((object, shmid, host));
        if let Some(from) = self.staged.remove(&object) {
            move_staged(&from, &fd, m.size).map_err(|e| {
                Error::msg(format!(
                    "filling shmid {shmid} (key {key:#x}) in the IPC namespace of restored pid {host}: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Once every process has attached them: restores owner, mode and
    /// SHM_LOCK and removes the segments that were marked for removal.
    pub fn finish(&self, objects: &dyn Fn(u32) -> Option<ObjectKind>) -> Result<()> {
        for &(object, shmid) in &self.made {
            finish_one(object, shmid, objects)?;
        }
        let mut hosts: Vec<i32> = self.made_private.iter().map(|m| m.2).collect();
        hosts.sort_unstable();
        hosts.dedup();
        for host in hosts {
            let mine: Vec<(u32, i32, ObjectKind)> = self
                .made_private
                .iter()
                .filter(|m| m.2 == host)
                .filter_map(|&(o, id, _)| Some((o, id, objects(o)?)))
                .collect();
            crest_sys::ns::run_in(host, "ipc", libc::CLONE_NEWIPC, || {
                mine.iter()
                    .try_for_each(|(o, id, k)| finish_one(*o, *id, &|_| Some(k.clone())))
            })
            .context(|| format!("joining the IPC namespace of restored pid {host}"))?
            .context(|| format!("finishing the System V segments of pid {host}'s IPC namespace"))?;
        }
        Ok(())
    }

    /// The restore succeeded: the segments stay.
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

fn finish_one(object: u32, shmid: i32, objects: &dyn Fn(u32) -> Option<ObjectKind>) -> Result<()> {
    let Some(ObjectKind::Shmem(ShmemObj {
        kind:
            ShmemKind::SysV {
                key,
                mode,
                uid,
                gid,
                destroyed,
                locked,
                ..
            },
        ..
    })) = objects(object)
    else {
        return Ok(());
    };
    sysvipc::shm_set_owner(shmid, uid, gid, mode)
        .context(|| format!("System V shared memory key {key:#x}"))?;
    if locked {
        sysvipc::shm_lock(shmid).context(|| format!("System V shared memory key {key:#x}"))?;
    }
    if destroyed {
        sysvipc::shm_remove(shmid);
    }
    Ok(())
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

/// The objects of an image that are segments of a private IPC namespace.
pub fn private_objects(ckpt: &Checkpoint) -> HashSet<u32> {
    ckpt.namespaces
        .table
        .iter()
        .filter_map(|n| match &n.state {
            NsState::Ipc(st) => Some(st.shm.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// After a dump that killed the tree: removes the System V segments of
/// crest's namespace it saved (the image holds them now, and a restore
/// needs their ids free).  Those of a private namespace went with it.
pub fn remove_dumped(ckpt: &Checkpoint) {
    let private = private_objects(ckpt);
    for (object, shmid) in shmids(&ckpt.objects) {
        if !private.contains(&object) {
            sysvipc::shm_remove(shmid);
        }
    }
}
