//! Files: the descriptor table, open file descriptions, cwd and root.
//!
//! Dump reads /proc/PID/fd and fdinfo; two descriptors share one open
//! file description (dup) when kcmp(KCMP_FILE) says so, and then share one
//! object.  Restore opens each object once in crest, places it at every
//! descriptor number in the new task and seeks it to its offset.

pub mod console;
pub mod deleted;
pub mod events;
pub mod fanotify;
pub mod filedata;
pub mod fown;
pub mod inotify_deleted;
pub mod locks;
pub mod pidfd;
pub mod procfiles;
pub mod tty;
pub mod ttydata;
pub mod unlinked;
pub mod uring;

use crate::error::{Context, Error, Result};
pub use crate::files::filedata::write_data;
use crate::model::{Fd, FileId, ObjectKind, OpenFile, OpenTarget, PipeObj, ShmemKind, ShmemObj};
use crate::objects::{file_id, ObjectTable};
use crate::Obstacle;
use crest_sys::proc;
use crest_sys::process::{kcmp, kcmp_type};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};

/// Character devices that carry no state and exist on every machine.
const STATELESS_DEVICES: [(u32, u32, &str); 5] = [
    (1, 3, "/dev/null"),
    (1, 5, "/dev/zero"),
    (1, 7, "/dev/full"),
    (1, 8, "/dev/random"),
    (1, 9, "/dev/urandom"),
];

/// Unlinked-file contents larger than this are refused.
const MAX_UNLINKED: u64 = 1 << 32;

/// Content that goes into the image as FILE_DATA records.
pub enum DataSource {
    /// An unlinked file, read through /proc/PID/fd/FD.
    Unlinked {
        object: u32,
        pid: i32,
        fd: i32,
        size: u64,
    },
    /// An unlinked file mapped but not open, read through
    /// /proc/PID/map_files/START-END.
    UnlinkedMap {
        object: u32,
        path: String,
        size: u64,
    },
    /// The bytes in flight in a pipe, copied at collect time.
    Pipe { object: u32, data: Vec<u8> },
    /// A shared-memory object, read through `path` (holes skipped).
    Shmem {
        object: u32,
        path: String,
        size: u64,
    },
    /// A shared-memory object read through crest's descriptor on it (a
    /// System V segment of a private IPC namespace that no process of
    /// the tree attaches); `what` names it in errors.
    ShmemFile {
        object: u32,
        what: String,
        file: std::fs::File,
        size: u64,
    },
}

/// A pipe met during collection.
struct PipeSeen {
    object: u32,
    read: bool,
    write: bool,
    /// A descriptor on it (pid, fd), for messages.
    at: (i32, i32),
}

/// (pid, fd, object) of a descriptor already collected.
type SeenFd = (i32, i32, u32);

/// Descriptors seen so far in a tree, by (dev, ino) of their file, so
/// that one open file description held by several descriptors (in one
/// process or several) becomes one object: kcmp(KCMP_FILE) decides.
#[derive(Default)]
pub struct FdIndex {
    seen: HashMap<(u64, u64), Vec<SeenFd>>,
    pipes: HashMap<u64, PipeSeen>,
    ptys: crate::files::tty::PtyIndex,
    /// Network sockets (see `crate::net`).
    pub net: crate::net::NetIndex,
    locks: crate::files::locks::LockIndex,
    /// Descriptors on POSIX message queues (see `crate::ns::mqueue`).
    pub mq: crate::ns::mqueue::FdQueues,
    /// Per pid: the locks and SIGIO owners found on its descriptors.
    held: HashMap<i32, (Vec<crate::model::FileLock>, Vec<crate::model::FdOwner>)>,
}

impl FdIndex {
    /// The locks and SIGIO owners collected for `pid`.
    pub fn take_held(
        &mut self,
        pid: i32,
    ) -> (Vec<crate::model::FileLock>, Vec<crate::model::FdOwner>) {
        self.held.remove(&pid).unwrap_or_default()
    }
}

/// Reads the descriptor table of `pid`.
pub fn collect_fds(
    pid: i32,
    objects: &mut ObjectTable,
    obstacles: &mut Vec<Obstacle>,
    data: &mut Vec<DataSource>,
    index: &mut FdIndex,
) -> Result<Vec<Fd>> {
    let mut out: Vec<Fd> = Vec::new();
    let pidfd = crest_sys::pidfd::open(pid)?;
    for fd in proc::list_fds(pid)? {
        if let Some(f) = collect_fd(pid, fd, &pidfd, objects, obstacles, data, index)? {
            out.push(f);
        }
    }
    Ok(out)
}

/// Reads descriptor `fd` of `pid` (`pidfd`): the object of its open file
/// description, made once per description; `None` when refused (an
/// obstacle says why) or closed meanwhile.  `pid` may be crest itself,
/// for the copies of the files in flight in a UNIX socket's queue.
fn collect_fd(
    pid: i32,
    fd: i32,
    pidfd: &OwnedFd,
    objects: &mut ObjectTable,
    obstacles: &mut Vec<Obstacle>,
    data: &mut Vec<DataSource>,
    index: &mut FdIndex,
) -> Result<Option<Fd>> {
    let mut inflight = crate::net::unix::InFlight::new();
    let refuse = |obstacles: &mut Vec<Obstacle>, reason: String| {
        obstacles.push(Obstacle {
            pid,
            object: format!("fd {fd}"),
            reason,
        })
    };
    let link = match proc::fd_link(pid, fd) {
        Ok(l) => l,
        Err(_) => return Ok(None), // closed meanwhile: the task is frozen, so only a race with exit
    };
    let info = proc::read_fdinfo(pid, fd)?;
    let md = match std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
        Ok(m) => m,
        Err(e) => {
            refuse(obstacles, format!("{link}: cannot stat: {e}"));
            return Ok(None);
        }
    };
    let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
    let flags = info.flags & !(libc::O_CLOEXEC as u32);
    let key = (md.dev(), md.ino());
    if let Some(prev) = index.seen.get(&key) {
        let mut shared = None;
        for &(ppid, pfd, obj) in prev {
            if kcmp(ppid, pid, kcmp_type::FILE, pfd as u64, fd as u64)? == 0 {
                shared = Some(obj);
                break;
            }
        }
        if let Some(obj) = shared {
            let held = &mut index.held.entry(pid).or_default().0;
            if let Err(r) =
                crate::files::locks::collect(pid, fd, obj, &info, &mut index.locks, held)
            {
                refuse(obstacles, format!("{link}: {r}"));
            }
            return Ok(Some(Fd {
                fd,
                cloexec,
                file: obj,
            }));
        }
    }
    let ft = md.file_type();
    let target = if flags & libc::O_PATH as u32 != 0 {
        if !link.starts_with('/') || link.ends_with(" (deleted)") {
            refuse(
                obstacles,
                format!("O_PATH descriptor of {link}: only files with a name are supported"),
            );
            return Ok(None);
        }
        OpenTarget::Path {
            path: link.clone(),
            kind: md.mode() & libc::S_IFMT,
        }
    } else if is_deleted_node(&link, &ft) {
        let stateless = STATELESS_DEVICES
            .iter()
            .any(|d| (d.0, d.1) == (libc::major(md.rdev()), libc::minor(md.rdev())));
        let busy = if ft.is_fifo() {
            fifo_bytes(pid, fd).map_or(true, |n| n != 0)
        } else {
            false
        };
        match crate::files::deleted::collect(&link, &md, stateless) {
            Ok(_) if busy => {
                refuse(
                    obstacles,
                    format!("{link}: a deleted FIFO with bytes in its buffer is not supported"),
                );
                return Ok(None);
            }
            Ok(n) => OpenTarget::Deleted(n),
            Err(why) => {
                refuse(obstacles, why);
                return Ok(None);
            }
        }
    } else if ft.is_file()
        && link.starts_with('/')
        && crest_sys::mqueue::is_queue(&format!("/proc/{pid}/fd/{fd}"))
    {
        let (dev, nlink) = (md.dev(), md.nlink());
        match crate::ns::mqueue::collect_fd(
            pid,
            fd,
            &link,
            dev,
            nlink,
            &index.net.tree,
            &mut index.mq,
        )? {
            Ok(t) => t,
            Err(reason) => {
                refuse(obstacles, reason);
                return Ok(None);
            }
        }
    } else if ft.is_file() && link.starts_with("/memfd:") {
        let path = format!("/proc/{pid}/fd/{fd}");
        let shmem = match objects.shmem(md.dev(), md.ino()) {
            Some(id) => id,
            None => crate::memory::shmem_from_path(
                objects,
                data,
                md.dev(),
                md.ino(),
                &path,
                Some(&link),
            )?,
        };
        OpenTarget::Memfd { shmem }
    } else if ft.is_file() {
        if md.nlink() == 0 || link.ends_with(" (deleted)") {
            if md.blocks() * 512 > MAX_UNLINKED {
                refuse(
                    obstacles,
                    format!("unlinked file {link} holds more than 4 GiB of data"),
                );
                return Ok(None);
            }
            let same_as = objects.unlinked(key.0, key.1);
            OpenTarget::Unlinked {
                path: link.trim_end_matches(" (deleted)").to_string(),
                size: md.size(),
                mode: md.mode(),
                meta: Some(crate::files::unlinked::meta(&md, flags, same_as)),
            }
        } else {
            OpenTarget::Regular(file_id(&link)?)
        }
    } else if ft.is_dir() {
        OpenTarget::Directory { path: link.clone() }
    } else if let Some(t) = crate::files::tty::collect(pid, fd, &link, &md, &info, &mut index.ptys)
        .or_else(|| crate::files::console::collect(pid, fd, &link, &md))
    {
        match t {
            Ok(t) => t,
            Err(reason) => {
                refuse(obstacles, reason);
                return Ok(None);
            }
        }
    } else if ft.is_char_device() {
        let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
        match STATELESS_DEVICES.iter().find(|d| d.0 == maj && d.1 == min) {
            Some(_) => OpenTarget::CharDevice {
                path: link.clone(),
                rdev: md.rdev(),
            },
            None => {
                refuse(
                    obstacles,
                    format!("character device {link} ({maj}:{min}) is not supported"),
                );
                return Ok(None);
            }
        }
    } else if ft.is_fifo() {
        if link.starts_with("pipe:") {
            let write = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
            let pipe = match index.pipes.get_mut(&md.ino()) {
                Some(p) => p,
                None => {
                    let (size, bytes) = match crate::files::filedata::pipe_contents(pid, fd) {
                        Ok(v) => v,
                        Err(e) => {
                            refuse(obstacles, format!("{link}: cannot read the pipe: {e}"));
                            return Ok(None);
                        }
                    };
                    let object = objects.add(ObjectKind::Pipe(PipeObj {
                        size,
                        data_len: bytes.len() as u64,
                        fifo: false,
                        external: None,
                    }));
                    if !bytes.is_empty() {
                        data.push(DataSource::Pipe {
                            object,
                            data: bytes,
                        });
                    }
                    index.pipes.entry(md.ino()).or_insert(PipeSeen {
                        object,
                        read: false,
                        write: false,
                        at: (pid, fd),
                    })
                }
            };
            if write {
                pipe.write = true;
            } else {
                pipe.read = true;
            }
            OpenTarget::PipeEnd {
                pipe: pipe.object,
                write,
            }
        } else {
            match fifo_bytes(pid, fd) {
                Ok(0) => OpenTarget::Fifo { path: link.clone() },
                Ok(_) => {
                    // The bytes in flight belong to the FIFO's inode,
                    // whoever opened it: one pipe object per inode.
                    let pipe = match index.pipes.get(&md.ino()) {
                        Some(p) => p.object,
                        None => {
                            let (size, bytes) = match crate::files::filedata::pipe_contents(pid, fd)
                            {
                                Ok(v) => v,
                                Err(e) => {
                                    refuse(obstacles, format!("FIFO {link}: {e}"));
                                    return Ok(None);
                                }
                            };
                            let object = objects.add(ObjectKind::Pipe(PipeObj {
                                size,
                                data_len: bytes.len() as u64,
                                fifo: true,
                                external: None,
                            }));
                            data.push(DataSource::Pipe {
                                object,
                                data: bytes,
                            });
                            // Named: anyone may open it, so there is no
                            // "other end outside the tree" to look for.
                            index.pipes.insert(
                                md.ino(),
                                PipeSeen {
                                    object,
                                    read: true,
                                    write: true,
                                    at: (pid, fd),
                                },
                            );
                            object
                        }
                    };
                    OpenTarget::FifoData {
                        path: link.clone(),
                        pipe,
                    }
                }
                Err(e) => {
                    refuse(obstacles, format!("FIFO {link}: {e}"));
                    return Ok(None);
                }
            }
        }
    } else if ft.is_socket() {
        match crate::net::collect(pid, fd, &mut index.net)
            .unwrap_or_else(|| crate::net::unix::collect(pid, fd, &mut index.net, &mut inflight))
        {
            Ok(t) => t,
            Err(reason) => {
                refuse(obstacles, reason);
                return Ok(None);
            }
        }
    } else if link.starts_with("anon_inode:") {
        match crate::files::events::collect(pid, fd, &link, &info) {
            Ok(t) => t,
            Err(reason) => {
                refuse(obstacles, reason);
                return Ok(None);
            }
        }
    } else {
        refuse(
            obstacles,
            format!("{link}: this kind of file is not supported"),
        );
        return Ok(None);
    };
    let is_path = matches!(target, OpenTarget::Path { .. });
    let is_mq = matches!(target, OpenTarget::PosixMq { .. });
    let obj = objects.add(ObjectKind::Open(OpenFile {
        flags,
        pos: if is_path || is_mq { 0 } else { info.pos },
        target: target.clone(),
    }));
    if is_mq {
        index.mq.took(obj);
    }
    if let OpenTarget::Unlinked { size, meta, .. } = target {
        if meta.is_none_or(|m| m.same_as.is_none()) {
            objects.set_unlinked(key.0, key.1, obj);
            data.push(DataSource::Unlinked {
                object: obj,
                pid,
                fd,
                size,
            });
        }
    }
    let held = index.held.entry(pid).or_default();
    if let Err(r) = crate::files::locks::collect(pid, fd, obj, &info, &mut index.locks, &mut held.0)
    {
        refuse(obstacles, format!("{link}: {r}"));
    }
    if !is_path {
        match crest_sys::pidfd::getfd(pidfd, pid, fd)
            .map_err(|e| e.to_string())
            .and_then(|f| crate::files::fown::collect(fd, &f))
        {
            Ok(Some(o)) => held.1.push(o),
            Ok(None) => {}
            Err(r) => refuse(obstacles, format!("{link}: {r}")),
        }
    }
    index.seen.entry(key).or_default().push((pid, fd, obj));
    if !inflight.is_empty() {
        collect_in_flight(pid, fd, obj, inflight, objects, obstacles, data, index)?;
    }
    Ok(Some(Fd {
        fd,
        cloexec,
        file: obj,
    }))
}

/// Makes objects of the files in flight in the queue of socket `fd` of
/// `pid` (object `obj`): crest's copies, read as crest's own descriptors
/// (one already met, held by a process or in flight elsewhere — the
/// socket itself, say — is the same object), recorded as the messages'
/// rights.  A refused one is named through the socket.
#[allow(clippy::too_many_arguments)]
fn collect_in_flight(
    pid: i32,
    fd: i32,
    obj: u32,
    inflight: crate::net::unix::InFlight,
    objects: &mut ObjectTable,
    obstacles: &mut Vec<Obstacle>,
    data: &mut Vec<DataSource>,
    index: &mut FdIndex,
) -> Result<()> {
    let me = std::process::id() as i32;
    let mine = crest_sys::pidfd::open(me)?;
    for (k, fds) in inflight {
        let mut ids = Vec::with_capacity(fds.len());
        for f in fds {
            let before = obstacles.len();
            let got = collect_fd(me, f.as_raw_fd(), &mine, objects, obstacles, data, index)?;
            for o in &mut obstacles[before..] {
                if o.pid == me {
                    o.pid = pid;
                    o.object = format!("fd {fd}");
                    o.reason = format!(
                        "a file in flight (SCM_RIGHTS) in message {k} queued on this socket: {}",
                        o.reason
                    );
                }
            }
            // Kept open until the dump ends: the file's content is read
            // through it, and kcmp compares later descriptors with it.
            index.net.keep_in_flight(f);
            if let Some(g) = got {
                ids.push(g.file);
            }
        }
        if let Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Unix(u),
            ..
        })) = objects.get_mut(obj)
        {
            if let Some(m) = u.queue.get_mut(k) {
                m.rights = ids;
            }
        }
    }
    Ok(())
}

/// A directory, FIFO or device node deleted while open.
fn is_deleted_node(link: &str, ft: &std::fs::FileType) -> bool {
    link.ends_with(" (deleted)")
        && (ft.is_dir() || ft.is_fifo() || ft.is_char_device() || ft.is_block_device())
}

/// Creates an empty shared-memory object of the right kind and size.
fn create_shmem(m: &ShmemObj) -> Result<OwnedFd> {
    let fd = match &m.kind {
        ShmemKind::Memfd { name, .. } => {
            if name.contains('\0') {
                return Err(Error::Invalid(format!(
                    "memfd name with a NUL byte: {name:?}"
                )));
            }
            let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
            if let Some(size) = m.huge_page {
                flags |= libc::MFD_HUGETLB | crest_sys::mem::huge_size_bits(size);
            }
            let flags = rustix::fs::MemfdFlags::from_bits_retain(flags);
            os(rustix::fs::memfd_create(name.as_str(), flags), || {
                format!("memfd_create({name})")
            })?
        }
        ShmemKind::SysV { shmid, .. } => {
            return Err(Error::Invalid(format!(
                "System V segment {shmid} is recreated by UnlinkedFiles::shmem"
            )))
        }
        ShmemKind::Anonymous if m.huge_page.is_some() => {
            crate::memory::hugetlb::create_anonymous(m.size, m.huge_page.unwrap_or(0))?
        }
        ShmemKind::Anonymous => {
            // The kernel names this object "/dev/zero (deleted)" only when
            // it comes from a shared anonymous mapping: make one, keep a
            // descriptor on its file, and drop the mapping.
            crest_sys::mem::shared_anonymous_file(m.size.max(1) as usize)?
        }
    };
    if let ShmemKind::Memfd { .. } = m.kind {
        os(rustix::fs::ftruncate(&fd, m.size), || {
            format!("sizing a memfd to {} bytes", m.size)
        })?;
        if let Some((mode, uid, gid)) = m.owner {
            let what = || format!("giving a memfd owner {uid}:{gid} and mode {mode:o}");
            std::os::unix::fs::fchown(&fd, Some(uid), Some(gid)).context(what)?;
            os(
                rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(mode)),
                what,
            )?;
        }
    }
    Ok(fd)
}

/// A new pipe (read end, write end), close-on-exec.
/// A new unlinked file in `$TMPDIR` (mode 0600), for data crest keeps
/// aside while it works; it disappears when closed.
pub fn spool_file() -> Result<File> {
    let dir = std::env::temp_dir();
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o600)
        .open(&dir)
        .context(|| format!("creating a spool file in {}", dir.display()))
}

pub fn make_pipe() -> Result<(OwnedFd, OwnedFd)> {
    os(
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC),
        || "pipe2".into(),
    )
}

/// A rustix call's result, with what crest was doing.
fn os<T>(r: rustix::io::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| crest_sys::Error::io(what(), e.into()).into())
}

/// Where pipe ends whose other end is held outside the tree are recorded
/// as external (see [`crate::DumpOptions::external_pipes`]).
pub struct ExternalPipes<'a> {
    pub objects: &'a mut ObjectTable,
    pub data: &'a mut Vec<DataSource>,
}

/// Pipes whose other end is held outside the tree cannot be restored
/// with their peer: list them, or, with `external`, record them as
/// external (keyed `pipe:[INODE]`, without their bytes; a read end with
/// unread bytes is still refused).  `tree` holds the pids of the tree.
pub fn check_pipe_ends(
    index: &FdIndex,
    tree: &[i32],
    obstacles: &mut Vec<Obstacle>,
    mut external: Option<ExternalPipes<'_>>,
) {
    crate::files::tty::check_pairs(&index.ptys, tree, obstacles);
    let half: Vec<(&u64, &PipeSeen)> = index
        .pipes
        .iter()
        .filter(|(_, p)| !(p.read && p.write))
        .collect();
    if half.is_empty() {
        return;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if tree.contains(&pid) || pid == std::process::id() as i32 {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            let Ok(l) = std::fs::read_link(f.path()) else {
                continue;
            };
            let l = l.to_string_lossy();
            for (ino, p) in &half {
                if l == format!("pipe:[{ino}]") {
                    if let Some(ext) = external.as_mut() {
                        match mark_external(ext, **ino, p) {
                            Ok(()) => continue,
                            Err(reason) => {
                                obstacles.push(Obstacle {
                                    pid: p.at.0,
                                    object: format!("fd {}", p.at.1),
                                    reason,
                                });
                                continue;
                            }
                        }
                    }
                    obstacles.push(Obstacle {
                        pid: p.at.0,
                        object: format!("fd {}", p.at.1),
                        reason: format!(
                            "the other end of this pipe is held by pid {pid}, outside the tree"
                        ),
                    });
                }
            }
        }
    }
}

/// Records the pipe of `p` (inode `ino`) as external.
fn mark_external(
    ext: &mut ExternalPipes<'_>,
    ino: u64,
    p: &PipeSeen,
) -> std::result::Result<(), String> {
    let key = format!("pipe:[{ino}]");
    let Some(ObjectKind::Pipe(obj)) = ext.objects.get_mut(p.object) else {
        return Err(format!("{key}: not a pipe object"));
    };
    if obj.external.is_some() {
        return Ok(());
    }
    if p.read && obj.data_len > 0 {
        return Err(format!(
            "{} bytes written by a process outside the tree wait unread in this pipe ({key})",
            obj.data_len
        ));
    }
    // The bytes in flight stay in the pipe, for its reader outside.
    obj.data_len = 0;
    obj.external = Some(key);
    let object = p.object;
    ext.data
        .retain(|d| !matches!(d, DataSource::Pipe { object: o, .. } if *o == object));
    Ok(())
}

/// Bytes waiting in a FIFO of the task.
fn fifo_bytes(pid: i32, fd: i32) -> Result<i32> {
    let f = crest_sys::pidfd::copy_fd(pid, fd)?;
    let n = os(rustix::io::ioctl_fionread(&f), || {
        format!("pid {pid} fd {fd}: FIONREAD")
    })?;
    Ok(n.min(i32::MAX as u64) as i32)
}

/// cwd and root of the task.
pub fn collect_fs(pid: i32) -> Result<crate::model::FsInfo> {
    let cwd = proc::read_link(pid, "cwd")?;
    // A deleted cwd that can be made again; the restore plan refuses the
    // others by name.
    let cwd_deleted = if cwd.ends_with(" (deleted)") {
        std::fs::metadata(format!("/proc/{pid}/cwd"))
            .ok()
            .and_then(|md| crate::files::deleted::collect(&cwd, &md, false).ok())
            .filter(|n| n.mode & libc::S_IFMT == libc::S_IFDIR)
    } else {
        None
    };
    Ok(crate::model::FsInfo {
        cwd,
        root: proc::read_link(pid, "root")?,
        cwd_deleted,
    })
}

/// Things crest builds before the stubs exist: unlinked files being
/// recreated (unlinked as soon as they are created, before they are filled,
/// so nothing of them is left however the restore ends) and pipes being
/// refilled.
#[derive(Default)]
pub struct UnlinkedFiles {
    files: crate::files::unlinked::Recreated,
    /// Pipe ends whose own description was handed out already.
    ends_given: std::collections::HashSet<(u32, bool)>,
    pipes: HashMap<u32, (OwnedFd, OwnedFd)>,
    /// Bytes to write into named FIFOs when they are opened.
    fifo_data: HashMap<u32, Vec<u8>>,
    shmem: HashMap<u32, OwnedFd>,
    /// Deleted directories, FIFOs and device nodes made again.
    nodes: crate::files::deleted::Nodes,
    ptys: crate::files::tty::Ptys,
    sysv: crate::memory::sysv::Segments,
    /// Descriptors the caller supplies for external pipe ends, by key.
    inherited: HashMap<String, OwnedFd>,
    /// The pids and tids of the tree being restored (pidfds of these are
    /// made once the processes exist: see `crate::files::pidfd`).
    pub tree_tasks: std::collections::HashSet<i32>,
    /// IPC namespaces made before the tree, for descriptors on their
    /// POSIX message queues (see `crate::ns::mqueue`).
    pub early_ipc: crate::ns::mqueue::Early,
}

impl UnlinkedFiles {
    /// Takes copies of the caller's descriptors for external pipe ends
    /// (see [`crate::RestoreOptions::inherit`]).
    pub fn inherit(&mut self, fds: &HashMap<String, std::os::fd::RawFd>) -> Result<()> {
        for (key, &fd) in fds {
            // The caller vouches for the descriptor (crest's own, named
            // on its command line); a closed one is refused by the kernel.
            // SAFETY: borrowed only for the duplication, while it is open.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let d = os(rustix::io::fcntl_dupfd_cloexec(b, 3), || {
                format!("the descriptor {fd} given for {key}")
            })?;
            self.inherited.insert(key.clone(), d);
        }
        Ok(())
    }

    /// A new description of the deleted node `n`, made again once.
    pub fn open_deleted(&mut self, n: &crate::model::DeletedNode, flags: u32) -> Result<OwnedFd> {
        self.nodes.open(n, flags)
    }

    /// Creates the pipe of object `id`, sized as it was.
    fn pipe(&mut self, id: u32, p: &PipeObj) -> Result<&(OwnedFd, OwnedFd)> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.pipes.entry(id) {
            let (r, w) = make_pipe()?;
            let got = rustix::pipe::fcntl_setpipe_size(&w, p.size as usize);
            if got.map_or(true, |g| (g as u64) < p.data_len) {
                return Err(crest_sys::Error::io(
                    format!(
                        "sizing a pipe to {} bytes (pipe-max-size may be lower here)",
                        p.size
                    ),
                    got.err()
                        .map_or(std::io::Error::from_raw_os_error(libc::ENOSPC), Into::into),
                )
                .into());
            }
            e.insert((r, w));
        }
        Ok(&self.pipes[&id])
    }

    /// The shared-memory object `id`, created (empty, sized) the first time.
    pub fn shmem(&mut self, id: u32, m: &ShmemObj) -> Result<&OwnedFd> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.shmem.entry(id) {
            e.insert(match m.kind {
                ShmemKind::SysV { .. } => self.sysv.create(id, m)?,
                _ => create_shmem(m)?,
            });
        }
        Ok(&self.shmem[&id])
    }

    /// Adds each memfd's seals, once every mapping of it exists.
    /// Also restores the System V segments' owners and modes (and removes
    /// the ones marked for removal), once every process attached them.
    pub fn seal(&self, objects: &dyn Fn(u32) -> Option<ObjectKind>) -> Result<()> {
        self.sysv.finish(objects)?;
        for (&id, fd) in &self.shmem {
            if let Some(ObjectKind::Shmem(ShmemObj {
                kind: ShmemKind::Memfd { name, seals },
                ..
            })) = objects(id)
            {
                if seals != 0 {
                    let seals = rustix::fs::SealFlags::from_bits_retain(seals);
                    os(rustix::fs::fcntl_add_seals(fd, seals), || {
                        format!("sealing memfd {name}")
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Closes crest's descriptors of the recreated memfds, shared memory
    /// and unlinked files once every process holds and maps its own: a
    /// writable descriptor left in crest would make the program's
    /// execveat of such a file fail with ETXTBSY ("Text file busy").
    pub fn close_built(&mut self, objects: &dyn Fn(u32) -> Option<ObjectKind>) {
        self.files.clear();
        self.shmem.retain(|&id, _| {
            matches!(
                objects(id),
                Some(ObjectKind::Shmem(ShmemObj {
                    kind: ShmemKind::SysV { .. },
                    ..
                }))
            )
        });
    }

    /// The restore succeeded: the recreated System V segments stay.
    pub fn keep_sysv(&mut self) {
        self.sysv.keep();
    }

    /// The System V segments being recreated (see
    /// [`crate::memory::sysv::Segments`]).
    pub fn sysv(&mut self) -> &mut crate::memory::sysv::Segments {
        &mut self.sysv
    }

    /// Writes a piece of an unlinked file's content or of a pipe's data.
    pub fn write(
        &mut self,
        ckpt_obj: Option<&ObjectKind>,
        object: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        if let Some(ObjectKind::Shmem(m)) = ckpt_obj {
            if offset
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > m.size)
            {
                return Err(Error::Invalid(format!(
                    "shared memory data for object {object} runs past its {} bytes",
                    m.size
                )));
            }
            let fd = self.shmem(object, m)?;
            if let Some(size) = m.huge_page {
                // hugetlbfs files take no write(2).
                return crate::memory::hugetlb::write_at(fd.as_fd(), size, offset, data)
                    .context(|| format!("filling hugetlbfs shared memory object {object}"));
            }
            let f = File::from(fd.try_clone()?);
            return f
                .write_all_at(data, offset)
                .context(|| format!("filling shared memory object {object}"));
        }
        if let Some(ObjectKind::Pipe(p)) = ckpt_obj {
            if offset
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > p.data_len)
            {
                return Err(Error::Invalid(format!(
                    "pipe data for object {object} runs past its {} bytes",
                    p.data_len
                )));
            }
            if p.fifo {
                // Written into the FIFO when it is opened by path.
                self.fifo_data
                    .entry(object)
                    .or_default()
                    .extend_from_slice(data);
                return Ok(());
            }
            let (_, w) = self.pipe(object, p)?;
            let mut f = File::from(w.try_clone()?);
            return f
                .write_all(data)
                .context(|| format!("refilling pipe object {object}"));
        }
        let (path, mode, size, meta) = match ckpt_obj {
            Some(ObjectKind::Open(OpenFile {
                target:
                    OpenTarget::Unlinked {
                        path,
                        mode,
                        size,
                        meta,
                    },
                ..
            })) if meta.as_ref().is_none_or(|m| m.same_as.is_none()) => (path, *mode, *size, meta),
            _ => {
                return Err(Error::Invalid(format!(
                    "file data for object {object}, which is not an unlinked file's content"
                )))
            }
        };
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(Error::Invalid(format!(
                "file data for {path} at {offset} runs past its size {size}"
            )));
        }
        self.files
            .write(object, path, mode, meta.as_ref(), offset, data)
    }

    /// A new description of the recreated unlinked file of object `id`.
    fn open_unlinked(
        &mut self,
        id: u32,
        o: &OpenFile,
        objects: &dyn Fn(u32) -> Option<ObjectKind>,
    ) -> Result<OwnedFd> {
        let OpenTarget::Unlinked { meta, .. } = &o.target else {
            unreachable!("called for unlinked files only")
        };
        // The description that carries the content (this one, or the one
        // it shares the file with).
        let owner = meta.as_ref().and_then(|m| m.same_as).unwrap_or(id);
        let Some(ObjectKind::Open(OpenFile {
            target:
                OpenTarget::Unlinked {
                    path,
                    size,
                    mode,
                    meta,
                },
            ..
        })) = objects(owner)
        else {
            return Err(Error::Invalid(format!(
                "unlinked file {id}: object {owner} is not an unlinked file"
            )));
        };
        let p = self.files.finish(owner, &path, mode, size, meta.as_ref())?;
        let fd = open_path(&p, crate::files::unlinked::open_flags(o.flags))
            .context(|| format!("reopening the recreated {path}"))?;
        set_fl(&fd, o.flags, &path)?;
        seek(&fd, o.pos, &path)?;
        Ok(fd)
    }
}

pub(crate) fn open_path(path: &str, flags: u32) -> Result<OwnedFd> {
    if path.contains('\0') {
        return Err(Error::Invalid(format!("path with a NUL byte: {path:?}")));
    }
    let flags = (flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY)
        | libc::O_CLOEXEC;
    if let Some(r) = crate::ns::mnt::open_rooted(path, flags) {
        return r;
    }
    let flags = rustix::fs::OFlags::from_bits_retain(flags as u32);
    os(
        rustix::fs::open(path, flags, rustix::fs::Mode::empty()),
        || format!("opening {path}"),
    )
}

fn seek(fd: &OwnedFd, pos: u64, path: &str) -> Result<()> {
    os(
        rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(pos)),
        || format!("seeking {path} to {pos}"),
    )?;
    Ok(())
}

fn set_fl(fd: &OwnedFd, flags: u32, path: &str) -> Result<()> {
    os(
        rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::from_bits_retain(flags)),
        || format!("setting the flags of {path}"),
    )
}

/// Opens the open file description `o` (object `id`) in crest.
pub fn open_object(
    id: u32,
    o: &OpenFile,
    unlinked: &mut UnlinkedFiles,
    objects: &dyn Fn(u32) -> Option<ObjectKind>,
) -> Result<OwnedFd> {
    let fd = match &o.target {
        OpenTarget::Memfd { shmem } => {
            let Some(ObjectKind::Shmem(m)) = objects(*shmem) else {
                return Err(Error::Invalid(format!(
                    "memfd {id}: object {shmem} is not shared memory"
                )));
            };
            let base = unlinked.shmem(*shmem, &m)?;
            // A new open file description of the same memfd.
            let fd = open_path(&format!("/proc/self/fd/{}", base.as_raw_fd()), o.flags)?;
            seek(&fd, o.pos, "a memfd")?;
            fd
        }
        OpenTarget::PipeEnd { pipe, write } => {
            let Some(ObjectKind::Pipe(p)) = objects(*pipe) else {
                return Err(Error::Invalid(format!(
                    "pipe end {id}: object {pipe} is not a pipe"
                )));
            };
            if let Some(key) = &p.external {
                let Some(fd) = unlinked.inherited.get(key) else {
                    return Err(Error::msg(format!(
                        "the pipe {key} led outside the tree at the checkpoint: \
                         the restore needs a descriptor for it (inherit_fd {key})"
                    )));
                };
                let fd = fd.try_clone()?;
                set_fl(&fd, o.flags, key)?;
                return Ok(fd);
            }
            let first = unlinked.ends_given.insert((*pipe, *write));
            let (r, w) = unlinked.pipe(*pipe, &p)?;
            // Each end is one open file description: hand out the pipe's
            // own; a second description of the same end is a reopen.
            let end = if *write { w } else { r };
            let fd = if first {
                end.try_clone()?
            } else {
                // Another description of the same end: its own flags.
                open_path(&format!("/proc/self/fd/{}", end.as_raw_fd()), o.flags)?
            };
            set_fl(&fd, o.flags, "a pipe")?;
            fd
        }
        OpenTarget::Regular(fid) => {
            let fd = open_path(&fid.path, o.flags)?;
            seek(&fd, o.pos, &fid.path)?;
            fd
        }
        OpenTarget::Directory { path } => {
            let fd = open_path(path, o.flags)?;
            seek(&fd, o.pos, path)?;
            fd
        }
        OpenTarget::CharDevice { path, rdev } => {
            let fd = open_path(path, o.flags)?;
            let md = File::from(fd.try_clone().context(|| format!("dup {path}"))?)
                .metadata()
                .context(|| format!("stat {path}"))?;
            if md.rdev() != *rdev {
                return Err(Error::Incompatible(format!(
                    "{path} is device {}:{} here, not {}:{} as in the image",
                    libc::major(md.rdev()),
                    libc::minor(md.rdev()),
                    libc::major(*rdev),
                    libc::minor(*rdev)
                )));
            }
            fd
        }
        OpenTarget::Fifo { path } => {
            // Opening one end of a FIFO blocks until the other is open:
            // hold a reader while opening, then set the real flags.
            let _keeper = open_path(path, (libc::O_RDONLY | libc::O_NONBLOCK) as u32)?;
            let fd = open_path(path, o.flags | libc::O_NONBLOCK as u32)?;
            set_fl(&fd, o.flags, path)?;
            fd
        }
        OpenTarget::FifoData { path, pipe } => {
            let _keeper = open_path(path, (libc::O_RDONLY | libc::O_NONBLOCK) as u32)?;
            let fd = open_path(path, o.flags | libc::O_NONBLOCK as u32)?;
            // The first description opened refills the FIFO's buffer; it
            // lives as long as any descriptor is open on the FIFO.
            if let Some(bytes) = unlinked.fifo_data.remove(pipe) {
                let w = open_path(path, (libc::O_WRONLY | libc::O_NONBLOCK) as u32)?;
                if let Some(ObjectKind::Pipe(p)) = objects(*pipe) {
                    // Best effort: the refill below fails if it is too small.
                    let _ = rustix::pipe::fcntl_setpipe_size(&w, p.size as usize);
                }
                File::from(w)
                    .write_all(&bytes)
                    .context(|| format!("refilling FIFO {path}"))?;
            }
            set_fl(&fd, o.flags, path)?;
            fd
        }
        OpenTarget::Unlinked { .. } => unlinked.open_unlinked(id, o, objects)?,
        OpenTarget::Deleted(n) => {
            let fd = unlinked.open_deleted(n, o.flags)?;
            if n.mode & libc::S_IFMT == libc::S_IFDIR {
                seek(&fd, o.pos, &n.path)?;
            }
            fd
        }
        OpenTarget::Path { path, kind } => {
            let fd = open_path(path, o.flags)?;
            let md = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .context(|| format!("stat {path}"))?;
            if md.mode() & libc::S_IFMT != *kind {
                return Err(Error::Incompatible(format!(
                    "{path} is not the same kind of file as at the checkpoint \
                     (file type {:o}, was {kind:o})",
                    md.mode() & libc::S_IFMT
                )));
            }
            fd
        }
        OpenTarget::Eventfd { .. }
        | OpenTarget::Timerfd { .. }
        | OpenTarget::Signalfd { .. }
        | OpenTarget::Inotify { .. }
        | OpenTarget::Fanotify(_)
        | OpenTarget::Epoll { .. } => crate::files::events::open(o)?,
        OpenTarget::Unix(u) => crate::net::unix::open(u)?,
        OpenTarget::Inet(_) | OpenTarget::Netlink(_) => crate::net::open(o)?,
        OpenTarget::Pidfd { pid, start_time } => {
            let tree = &unlinked.tree_tasks;
            crate::files::pidfd::open(o, *pid, *start_time, &|q| tree.contains(&q))?
        }
        OpenTarget::PtyMaster(_) | OpenTarget::PtySlave { .. } | OpenTarget::TtyAlias { .. } => {
            crate::files::tty::open(o, &mut unlinked.ptys, objects)?
        }
        OpenTarget::SystemTty(t) => crate::files::console::open(o, t)?,
        OpenTarget::PosixMq { name, ipc_ns } => {
            crate::ns::mqueue::open(name, *ipc_ns, o.flags, &unlinked.early_ipc)
                .context(|| format!("reopening POSIX message queue {name}"))?
        }
    };
    // open(2) ignores O_ASYNC: only F_SETFL sets it.
    if o.flags & libc::O_ASYNC as u32 != 0 {
        set_fl(&fd, o.flags, "a file with O_ASYNC")?;
    }
    Ok(fd)
}

/// Closes crest's own ends of the recreated pipes (once the stubs hold
/// theirs), so readers see end-of-file when the restored writers close.
pub fn release_pipes(unlinked: &mut UnlinkedFiles) {
    unlinked.pipes.clear();
}

/// Lets go of the recreated unlinked files once every descriptor on them
/// is open (their names went when they were created).
pub fn unlink_recreated(unlinked: &mut UnlinkedFiles) -> Result<()> {
    unlinked.files.unlink_all()?;
    unlinked.nodes.remove_all()
}

/// Checks the file at `f.path` is still the one that was checkpointed.
pub fn same_file(f: &FileId) -> Result<()> {
    let md = std::fs::metadata(&*crate::ns::mnt::host_path(&f.path))
        .context(|| format!("the image needs file {}", f.path))?;
    check_same(f, &md)
}

fn check_same(f: &FileId, md: &std::fs::Metadata) -> Result<()> {
    let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
    if md.size() != f.size || mtime != f.mtime_ns {
        return Err(Error::Incompatible(format!(
            "{} changed since the checkpoint (size {} → {}, mtime changed: {}); \
             restoring would mix old memory with new file content",
            f.path,
            f.size,
            md.size(),
            mtime != f.mtime_ns
        )));
    }
    Ok(())
}

/// Opens a file of the image for mapping or as the exe link, checking it
/// is still the file that was checkpointed.
pub fn open_checked(f: &FileId, write: bool) -> Result<OwnedFd> {
    let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
    let fd =
        open_path(&f.path, flags as u32).context(|| format!("the image needs file {}", f.path))?;
    let md = File::from(fd.try_clone().context(|| format!("dup {}", f.path))?)
        .metadata()
        .context(|| format!("stat {}", f.path))?;
    check_same(f, &md)?;
    Ok(fd)
}
