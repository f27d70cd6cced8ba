//! System V shared memory, semaphores and message queues (for the last
//! two, the x86-64 kernel layouts of `ipc64_perm`, `semid64_ds` and
//! `msqid64_ds`).

use crate::{Error, Result};

const IPC_CREAT: i32 = 0o1000;
const IPC_EXCL: i32 = 0o2000;
const IPC_NOWAIT: i64 = 0o4000;
const IPC_SET: i32 = 1;
const IPC_STAT: i32 = 2;
const GETALL: i32 = 13;
const SETALL: i32 = 17;
const MSG_COPY: i64 = 0o40000;

/// `struct ipc64_perm` fields crest uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
}

fn perm_at(b: &[u8]) -> Perm {
    let w = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    Perm {
        key: w(0) as i32,
        uid: w(4),
        gid: w(8),
        cuid: w(12),
        cgid: w(16),
        mode: w(20),
    }
}

fn put_perm(b: &mut [u8], p: &Perm) {
    b[4..8].copy_from_slice(&p.uid.to_ne_bytes());
    b[8..12].copy_from_slice(&p.gid.to_ne_bytes());
    b[20..24].copy_from_slice(&p.mode.to_ne_bytes());
}

fn sys(r: i64, what: impl FnOnce() -> String) -> Result<i64> {
    if r < 0 {
        return Err(Error::last_os(what()));
    }
    Ok(r)
}

/// IPC_STAT of semaphore set `id`: its owner and mode, and how many
/// semaphores it has.
pub fn sem_stat(id: i32) -> Result<(Perm, usize)> {
    let mut b = [0u8; 104];
    // SAFETY: IPC_STAT writes a semid64_ds (104 bytes on x86-64) to b.
    let r = unsafe { libc::syscall(libc::SYS_semctl, id, 0, IPC_STAT, b.as_mut_ptr()) };
    sys(r, || format!("semctl({id}, IPC_STAT)"))?;
    let nsems = u64::from_ne_bytes(b[80..88].try_into().expect("8 bytes"));
    Ok((perm_at(&b), nsems as usize))
}

/// Every semaphore's value in set `id` (of `n`).
pub fn sem_values(id: i32, n: usize) -> Result<Vec<u16>> {
    let mut v = vec![0u16; n];
    // SAFETY: GETALL writes n unsigned shorts to v.
    let r = unsafe { libc::syscall(libc::SYS_semctl, id, 0, GETALL, v.as_mut_ptr()) };
    sys(r, || format!("semctl({id}, GETALL)"))?;
    Ok(v)
}

/// Creates a semaphore set with these values; owner and mode as `perm`.
pub fn sem_create(perm: &Perm, values: &[u16]) -> Result<i32> {
    let flags = IPC_CREAT | IPC_EXCL | (perm.mode & 0o777) as i32;
    // SAFETY: plain syscall.
    let r = unsafe { libc::syscall(libc::SYS_semget, perm.key, values.len(), flags) };
    let id = sys(r, || format!("semget(key {:#x})", perm.key))? as i32;
    // SAFETY: SETALL reads values.len() unsigned shorts.
    let r = unsafe { libc::syscall(libc::SYS_semctl, id, 0, SETALL, values.as_ptr()) };
    sys(r, || format!("semctl({id}, SETALL)"))?;
    let mut b = [0u8; 104];
    put_perm(&mut b, perm);
    // SAFETY: IPC_SET reads a semid64_ds.
    let r = unsafe { libc::syscall(libc::SYS_semctl, id, 0, IPC_SET, b.as_ptr()) };
    sys(r, || format!("semctl({id}, IPC_SET)"))?;
    Ok(id)
}

/// IPC_STAT of message queue `id`: owner and mode, messages, byte limit.
pub fn msg_stat(id: i32) -> Result<(Perm, u64, u64)> {
    let mut b = [0u8; 120];
    // SAFETY: IPC_STAT writes a msqid64_ds (120 bytes on x86-64) to b.
    let r = unsafe { libc::syscall(libc::SYS_msgctl, id, IPC_STAT, b.as_mut_ptr()) };
    sys(r, || format!("msgctl({id}, IPC_STAT)"))?;
    let w = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    Ok((perm_at(&b), w(80), w(88)))
}

/// A copy of message `index` of queue `id` (MSG_COPY: the queue keeps
/// it): its type and text.
pub fn msg_copy(id: i32, index: u64) -> Result<(i64, Vec<u8>)> {
    let mut buf = vec![0u8; 8 + (1 << 20)];
    let max = buf.len() - 8;
    // SAFETY: msgrcv writes at most 8 + max bytes to buf.
    let r = unsafe {
        libc::syscall(
            libc::SYS_msgrcv,
            id,
            buf.as_mut_ptr(),
            max,
            index,
            IPC_NOWAIT | MSG_COPY,
        )
    };
    let n = sys(r, || format!("msgrcv({id}, MSG_COPY {index})"))? as usize;
    let t = i64::from_ne_bytes(buf[0..8].try_into().expect("8 bytes"));
    buf.truncate(8 + n);
    Ok((t, buf.split_off(8)))
}

/// Creates a message queue holding `messages`; owner, mode and byte limit
/// as given.
pub fn msg_create(perm: &Perm, qbytes: u64, messages: &[(i64, Vec<u8>)]) -> Result<i32> {
    let flags = IPC_CREAT | IPC_EXCL | (perm.mode & 0o777) as i32;
    // SAFETY: plain syscall.
    let r = unsafe { libc::syscall(libc::SYS_msgget, perm.key, flags) };
    let id = sys(r, || format!("msgget(key {:#x})", perm.key))? as i32;
    let mut b = [0u8; 120];
    put_perm(&mut b, perm);
    // A limit at least as large as what it holds while it is filled.
    let total: u64 = messages.iter().map(|m| m.1.len() as u64).sum();
    b[88..96].copy_from_slice(&qbytes.max(total).to_ne_bytes());
    let set = |b: &[u8]| {
        // SAFETY: IPC_SET reads a msqid64_ds.
        let r = unsafe { libc::syscall(libc::SYS_msgctl, id, IPC_SET, b.as_ptr()) };
        sys(r, || format!("msgctl({id}, IPC_SET)"))
    };
    set(&b)?;
    for (t, text) in messages {
        let mut m = t.to_ne_bytes().to_vec();
        m.extend_from_slice(text);
        // SAFETY: msgsnd reads 8 + text.len() bytes from m.
        let r = unsafe { libc::syscall(libc::SYS_msgsnd, id, m.as_ptr(), text.len(), IPC_NOWAIT) };
        sys(r, || format!("msgsnd({id})"))?;
    }
    b[88..96].copy_from_slice(&qbytes.to_ne_bytes());
    set(&b)?;
    Ok(id)
}

/// Removes semaphore set (`sem`) or message queue `id`.
pub fn remove(sem: bool, id: i32) {
    const IPC_RMID: i32 = 0;
    // SAFETY: plain syscalls; a failure leaves nothing to undo.
    unsafe {
        if sem {
            libc::syscall(libc::SYS_semctl, id, 0, IPC_RMID, 0usize);
        } else {
            libc::syscall(libc::SYS_msgctl, id, IPC_RMID, 0usize);
        }
    }
}

/// The ids listed in /proc/sysvipc/`what` (`sem`, `msg`, `shm`) of the
/// calling thread's IPC namespace.
pub fn list_ids(what: &str) -> Result<Vec<i32>> {
    let path = format!("/proc/sysvipc/{what}");
    let text =
        std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect())
}

/// Makes the next object of `what` (`sem`, `msg`) created in the calling
/// thread's IPC namespace get `id`.
pub fn set_next_id(what: &str, id: i32) -> Result<()> {
    let path = format!("/proc/sys/kernel/{what}_next_id");
    std::fs::write(&path, id.to_string()).map_err(|e| Error::io(format!("writing {path}"), e))
}

/// shmget(2): the id of segment `key` made or found with `flags`; the
/// error keeps its errno (ENOSPC, EEXIST… mean different things to callers).
pub fn shm_get(key: i32, size: u64, flags: i32) -> std::io::Result<i32> {
    // SAFETY: shmget takes no pointers.
    let id = unsafe { libc::shmget(key, size as usize, flags) };
    if id < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(id)
}

/// [`shm_get`] creating the segment as effective user `cuid` and group
/// `cgid`, which the kernel records as its creator (shm_perm.cuid/cgid;
/// IPC_SET cannot change them): on a thread of its own (in the calling
/// thread's IPC namespace) whose effective ids alone are switched, by the
/// raw syscalls (glibc's wrappers would switch every thread).  The outer
/// error: the ids could not be switched (no CAP_SETUID/CAP_SETGID);
/// the inner result is shmget's.
pub fn shm_get_as(
    cuid: u32,
    cgid: u32,
    key: i32,
    size: u64,
    flags: i32,
) -> std::io::Result<std::io::Result<i32>> {
    // SAFETY: plain getters.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if (euid, egid) == (cuid, cgid) {
        return Ok(shm_get(key, size, flags));
    }
    let keep = u32::MAX; // -1: unchanged
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setresgid/setresuid of this thread only, with plain
            // integer arguments.
            unsafe {
                if libc::syscall(libc::SYS_setresgid, keep, cgid, keep) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_setresuid, keep, cuid, keep) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let r = shm_get(key, size, flags);
            // SAFETY: as above: back to crest's ids (the user first, which
            // gives back the capability to set the group); the thread
            // ends right after anyway.
            unsafe {
                libc::syscall(libc::SYS_setresuid, keep, euid, keep);
                libc::syscall(libc::SYS_setresgid, keep, egid, keep);
            }
            Ok(r)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("a shmget thread panicked")))
    })
}

/// Removes shared memory segment `id` (once its last attach goes).
pub fn shm_remove(id: i32) {
    // SAFETY: IPC_RMID takes no buffer; a failure leaves nothing to undo.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

/// Sets the owner and permission bits of shared memory segment `id`.
pub fn shm_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> Result<()> {
    // SAFETY: an all-zero shmid_ds is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT fills `ds`, which lives across the call.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } != 0 {
        return Err(Error::last_os(format!("IPC_STAT on shmid {id}")));
    }
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as _;
    // SAFETY: IPC_SET reads `ds`, which lives across the call.
    if unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } != 0 {
        return Err(Error::last_os(format!("IPC_SET on shmid {id}")));
    }
    Ok(())
}

/// Locks shared memory segment `id` in memory (SHM_LOCK).
pub fn shm_lock(id: i32) -> Result<()> {
    // SAFETY: SHM_LOCK takes no buffer.
    if unsafe { libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) } != 0 {
        return Err(Error::last_os(format!("SHM_LOCK on shmid {id}")));
    }
    Ok(())
}

/// crest's own attach of a shared memory segment, detached on drop.
pub struct ShmAttach {
    addr: *mut libc::c_void,
    len: u64,
}

impl ShmAttach {
    /// Attaches segment `id` of `size` bytes where the kernel chooses,
    /// read-only unless `write`.
    pub fn new(id: i32, size: u64, write: bool) -> std::io::Result<ShmAttach> {
        let flags = if write { 0 } else { libc::SHM_RDONLY };
        // SAFETY: the kernel picks a free address; nothing else uses it.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if addr as isize == -1 {
            return Err(std::io::Error::last_os_error());
        }
        let page = crate::process::page_size() as u64;
        Ok(ShmAttach {
            addr,
            len: size.max(1).div_ceil(page) * page,
        })
    }

    /// The /proc/self/map_files link of the attach: its shm file.
    pub fn link(&self) -> String {
        let a = self.addr as u64;
        format!("/proc/self/map_files/{a:x}-{:x}", a + self.len)
    }

    /// Opens the segment's shm file (read-only) through the attach; the
    /// mapping's real end is looked up when it is not where small pages
    /// put it (a segment in huge pages).
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        match std::fs::File::open(self.link()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let a = self.addr as u64;
                let maps = std::fs::read_to_string("/proc/self/maps")?;
                let range = maps
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .find(|r| r.split('-').next() == Some(&format!("{a:x}")))
                    .ok_or(e)?;
                std::fs::File::open(format!("/proc/self/map_files/{range}"))
            }
            r => r,
        }
    }
}

impl Drop for ShmAttach {
    fn drop(&mut self) {
        // SAFETY: detaching exactly the attach made in `new`, never touched.
        unsafe { libc::shmdt(self.addr) };
    }
}
